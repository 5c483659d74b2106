#!/usr/bin/env bash
# Submits an orderflow pipeline in streaming mode to a Flink cluster through Beam's FlinkRunner.
#
#   ./run_flink.sh orders|presence --flink_master HOST:PORT [options] [pipeline options] [--dry-run]
#
# Launcher options (defaults in brackets):
#   --flink_master HOST:PORT     JobManager REST endpoint [$FLINK_MASTER; required]
#   --flink_version X.Y          Flink minor version of the cluster [1.20]
#   --parallelism N              parallelism of every operator [topic partitions from the settings]
#   --max_parallelism N          key groups, the ceiling of rescaling [720]
#   --checkpointing_interval MS  milliseconds between checkpoints [60000]
#   --checkpointing_mode M       EXACTLY_ONCE | AT_LEAST_ONCE [EXACTLY_ONCE]
#   --environment_type T         EXTERNAL (SDK worker pool sidecar) | PROCESS | DOCKER [EXTERNAL]
#   --environment_config C       EXTERNAL: pool address [localhost:50000]; DOCKER: image; PROCESS: JSON
#   --setup_file PATH            what the SDK workers install orderflow from [./setup.py]
#   --job_name NAME              [orderflow-<pipeline>]
#   --no_uber_jar                run a local Beam job server instead of posting an uber jar
#   --output_executable_path JAR write the FlinkDeployment's application jar instead of submitting
#   --dry-run                    validate, print the resolved submission as JSON, touch no network
# Every other option goes to Beam and to the pipeline's own options (OrdersOptions / PresenceOptions);
# an option nobody declares is an error. See docs/deploy.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  # The usage is the comment block at the top of this file.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [ $# -eq 0 ] && exit 2 || exit 0
fi

# The project's virtualenv when there is one (a checkout), else the image's interpreter.
PYTHON="${ORDERFLOW_PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi

cd "$ROOT"
exec "$PYTHON" -m orderflow.flink_submit "$@"
