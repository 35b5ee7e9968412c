#!/usr/bin/env bash
# The whole study in one command: creates the environment if needed, then trains every configuration of
# a profile (in parallel workers), evaluates each run, writes the tables to results/<profile>/, audits the
# paper's claims on the runs (results/<profile>/audit.md), and ends with the report: every notebook executed
# (results/<profile>/notebooks/), its tables in results/<profile>/tables/ and its figures in
# figures/<profile>/.
#
#   ./reproduce.sh            # the CPU profile (tiny models, synthetic arithmetic): 30 to 45 minutes on 2 cores, 60 on slower ones
#   ./reproduce.sh smoke      # about a minute: the micro model, every objective, a handful of steps
#   ./reproduce.sh cpu-full   # the CPU profile with 5 seeds and longer runs: about 8 hours on 2 cores
#                             (scripts/phase_grid.sh cpu-full runs its phase diagram alone)
#   ./reproduce.sh paper      # the paper's configurations (GPUs; Qwen models from the hub)
#
# Extra arguments go to `pspo-repro study` (e.g. --workers 4, --seeds 0,1).
set -euo pipefail
cd "$(dirname "$0")"
profile=${1:-cpu}
shift || true
started=$(date +%s)
./scripts/setup_env.sh
echo "environment ready in $(( $(date +%s) - started )) s"
if [ -z "${PSPO_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  PSPO_DATA_DIR=$(cd ../shared/data && pwd)
  export PSPO_DATA_DIR
fi
study_started=$(date +%s)
status=0
.venv/bin/pspo-repro study --profile "$profile" --runs runs --results results "$@" || status=$?
echo "study finished in $(( $(date +%s) - study_started )) s (total $(( $(date +%s) - started )) s), exit status $status"
# The report covers every finished run, so it also follows a study where some runs failed (status 1; the
# report lists them); after a usage error (status 2) there is nothing to report.
if [ "$status" -gt 1 ]; then
  exit $status
fi
audit_started=$(date +%s)
report_status=0
.venv/bin/pspo-repro audit --profile "$profile" --runs runs --results results || report_status=$?
echo "audit finished in $(( $(date +%s) - audit_started )) s, exit status $report_status"
report_started=$(date +%s)
.venv/bin/pspo-repro report --profile "$profile" --runs runs --results results --figures figures || report_status=$?
echo "report finished in $(( $(date +%s) - report_started )) s (total $(( $(date +%s) - started )) s), exit status $report_status"
if [ "$status" -ne 0 ]; then
  exit $status
fi
exit $report_status
