-- The MQTT bridge's connection changes in the unavailability history: a stretch of kind 'connection' (reason
-- 'disconnected') from a restaurant's last will (DISCONNECTED) to its reconnection (CONNECTED).
ALTER TABLE restaurant_unavailability DROP CONSTRAINT IF EXISTS restaurant_unavailability_kind_check;
ALTER TABLE restaurant_unavailability ADD CONSTRAINT restaurant_unavailability_kind_check
    CHECK (kind IN ('status', 'schedule', 'connection'));
