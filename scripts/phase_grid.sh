#!/usr/bin/env bash
# A profile's phase diagram alone (its `grid`), without the profile's other runs: trains and evaluates every
# grid cell (resumable: finished cells are kept), then writes the diagram's files (phase.md, phase.csv,
# phase-winners.csv and the phase-*.png figures), the claims audit of the grid's runs (audit.md: the claims
# the cells can test, the others marked as missing their runs), timing.md and profile.yaml into
# results/<profile>/, and every cell's run logs into results/<profile>/run-logs/. `./reproduce.sh <profile>`
# writes the same phase files beside the rest of the study.
#
#   scripts/phase_grid.sh cpu-full              # the full grid: 825 runs, about 2.6 hours on 2 cores
#   scripts/phase_grid.sh cpu-full --seeds 0,1  # extra arguments go to `pspo-repro study`
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: scripts/phase_grid.sh PROFILE [pspo-repro study arguments]}
shift
./scripts/setup_env.sh
if [ -z "${PSPO_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  PSPO_DATA_DIR=$(cd ../shared/data && pwd)
  export PSPO_DATA_DIR
fi
# the profile's name (its file may be given as a path) and its grid cells' labels
read -r name labels < <(.venv/bin/python - "$profile" <<'EOF'
import sys
from pathlib import Path

from pspo_repro.study import profiles

profile = profiles.load_profile(sys.argv[1])
labels = dict.fromkeys(r.label for r in profiles.expand(profile) if profiles.parse_grid_label(r.label))
if not labels:
    sys.exit(f"profile {sys.argv[1]!r} has no grid")
print(profile.get("name", Path(sys.argv[1]).stem), ",".join(labels))
EOF
)
if [ -z "${labels:-}" ]; then
  exit 2  # the profile could not be read or has no grid (the reason is printed above)
fi
tables=$(mktemp -d)
trap 'rm -rf "$tables"' EXIT
started=$(date +%s)
status=0
.venv/bin/pspo-repro study --profile "$profile" --runs runs --results "$tables" --objectives "$labels" "$@" \
  || status=$?
echo "grid finished in $(( $(date +%s) - started )) s, exit status $status"
if [ "$status" -gt 1 ]; then
  exit $status
fi
# the claims the grid's cells can test (clip-higher, GSPO, CISPO, TOPR, ...); no identity retraining
.venv/bin/pspo-repro audit --profile "$profile" --runs runs --results "$tables" --no-measure
.venv/bin/python - "$tables/$name" "runs/$name" "results/$name" <<'EOF'
import shutil
import sys
from pathlib import Path

from pspo_repro.analysis import run_logs

tables, study, results = map(Path, sys.argv[1:])
results.mkdir(parents=True, exist_ok=True)
kept = [
    p
    for p in tables.iterdir()
    if p.name.startswith(("phase", "audit")) or p.name in ("timing.md", "profile.yaml")
]
for path in kept:
    shutil.copy2(path, results / path.name)
run_logs.collect(study, results)
print(f"wrote {', '.join(sorted(p.name for p in kept))} and run-logs/ to {results}")
EOF
exit $status
