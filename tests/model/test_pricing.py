"""trading_days: the days whose reference data a run loads (pricing itself: tests/transforms/test_price_orders.py)."""
from __future__ import annotations

from orderflow.model import pricing
from orderflow.model.pricing import trading_days


def test_trading_days_default_to_today_and_lookback(module_settings):
    days = trading_days(module_settings, None, 2)
    assert len(days) == 3 and days[-1] == str(pricing.today(module_settings))
    assert trading_days(module_settings, ["2026-01-02"], 5) == ["2026-01-02"]
