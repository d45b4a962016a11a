#!/usr/bin/env bash
# Run transformers' own common model tests (tests/test_modeling_common.py of the installed version's
# source distribution) against UniQModel / UniQForImageClassification, outside this repository:
# the ResNet-style tiny tester tests/transformers_common_tester.py (resnet20 w2a2) is copied next to
# the downloaded tests. The expected failures and their reasons are listed in README.md ("Fine-tuning
# and the Trainer"). About 5 min on 2 cores. PYTHON overrides the interpreter (default .venv/bin/python).
# Usage: scripts/transformers_common_tests.sh [WORKDIR] [pytest args...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
work="${1:-${TMPDIR:-/tmp}/uniq_transformers_common}"; shift || true
version="$("$py" -c 'import transformers; print(transformers.__version__)')"
mkdir -p "$work" && cd "$work"
[ -d "transformers-$version" ] || {
  "$py" -m pip download --no-deps --no-binary :all: "transformers==$version" -d . >/dev/null
  tar xzf "transformers-$version.tar.gz"
}
[ -d extra/parameterized ] || "$py" -m pip install -q --target extra parameterized
tests="transformers-$version/tests"
mkdir -p "$tests/models/uniq" "$tests/utils" "$tests/exporters" "$tests/generation"
touch "$tests/__init__.py" "$tests/models/__init__.py" "$tests/models/uniq/__init__.py" \
      "$tests/utils/__init__.py" "$tests/exporters/__init__.py" "$tests/generation/__init__.py"
# Three modules test_modeling_common.py imports are absent from the sdist: minimal stand-ins.
cat > "$tests/utils/test_configuration_utils.py" <<'EOF'
config_common_kwargs = {  # as in transformers' tests/utils/test_configuration_utils.py (5.x)
    "return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
    "chunk_size_feed_forward": 5, "architectures": ["BertModel"], "id2label": {0: "label"},
    "label2id": {"label": "0"}, "problem_type": "regression",
}
EOF
echo 'class ExportTesterMixin:  # exporter tests: torch.export is checked by tests/test_parity.py
    pass' > "$tests/exporters/test_export.py"
echo 'class GenerationTesterMixin:  # image classifiers do not generate
    pass' > "$tests/generation/test_utils.py"
cp "$repo/tests/transformers_common_tester.py" "$tests/models/uniq/test_modeling_uniq.py"
cd "transformers-$version"
PYTHONPATH="$work/extra:$repo${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  "$py" -m pytest -p no:xdist -p no:cacheprovider -q tests/models/uniq/test_modeling_uniq.py -rf "$@"
