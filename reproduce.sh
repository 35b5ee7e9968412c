#!/usr/bin/env bash
# The whole study in one command: creates the environment if needed, then trains every configuration of
# a profile, evaluates each run, and writes the tables to results/<profile>/.
#
#   ./reproduce.sh            # the CPU profile (tiny models, synthetic arithmetic): about ten hours on 2 cores
#   ./reproduce.sh smoke      # a few minutes: one tiny model, every objective, a handful of steps
#   ./reproduce.sh paper      # the paper's configurations (GPUs; Qwen models from the hub)
set -euo pipefail
cd "$(dirname "$0")"
profile=${1:-cpu}
./scripts/setup_env.sh
if [ -z "${PSPO_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  PSPO_DATA_DIR=$(cd ../shared/data && pwd)
  export PSPO_DATA_DIR
fi
exec .venv/bin/pspo-repro study --profile "$profile" --runs runs --results results
