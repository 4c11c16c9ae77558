#!/usr/bin/env bash
# Build the environment the original NVlabs/EAGLE code runs in, from the package registries, for
# the side-by-side benchmarks (the original's code itself is never copied into this repository).
#
#   benchmarks/original/setup_env.sh VENV_DIR ORIGINAL_REPO
#
# VENV_DIR: where to create the venv; ORIGINAL_REPO: a checkout of github.com/NVlabs/EAGLE.
# Versions: the ones the parity fixtures were generated with (shared/parity/*.json "run"), with
# the torch 2.13 CPU wheel in place of the original's torch 2.3.1 (same numerics for these ops).
set -euo pipefail
VENV=${1:?usage: setup_env.sh VENV_DIR ORIGINAL_REPO}
REPO=${2:?usage: setup_env.sh VENV_DIR ORIGINAL_REPO}
test -f "$REPO/eagle/model/multimodal_encoder/multi_backbone_channel_concatenation_encoder.py" \
  || { echo "error: $REPO is not a checkout of NVlabs/EAGLE" >&2; exit 2; }
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# One constraint for every install: timm pulls in torchvision, whose newest release would
# otherwise upgrade torch.
echo "torch==2.13.0" > "$VENV/constraints.txt"
"$PIP" install -q -c "$VENV/constraints.txt" torch==2.13.0
"$PIP" install -q -c "$VENV/constraints.txt" "transformers==4.44.2" "tokenizers==0.19.1" "timm==0.9.11" "numpy<2" "Pillow==10.4.0" \
  "einops==0.6.1" "einops-exts==0.0.4" fvcore scipy "accelerate==0.34.2" sentencepiece
# timm 0.9.11 imports torchvision at import time (timm.layers -> torchvision.ops.misc), so it must be
# installed. The registry's torchvision for torch 2.13 (0.28.0) is built against the CUDA torch: its
# C extension does not load with the CPU wheel, and two unconditional fake-kernel registrations in
# torchvision/_meta_registrations.py then fail ("operator torchvision::nms does not exist"), which
# breaks `import timm` and transformers' SAM processor. The original code never calls torchvision's
# C ops (nms, roi_align, ...), so the wheel is installed without dependencies and those two
# registrations are made conditional on the extension having loaded, like the file's other ones.
"$PIP" install -q -c "$VENV/constraints.txt" --no-deps "torchvision==0.28.0"
META=$("$VENV/bin/python" -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('torchvision').origin).parent / '_meta_registrations.py')")
"$VENV/bin/python" - "$META" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
old = '@torch.library.register_fake("torchvision::'
new = '@(torch.library.register_fake if torchvision.extension._has_ops() else (lambda *a, **k: (lambda f: f)))("torchvision::'
if old in text:
    open(path, "w").write(text.replace(old, new))
PY
# The original is not a package with an installer we need; its path is put on sys.path by the runner.
echo "$REPO" > "$VENV/eagle-original-repo.txt"
"$VENV/bin/python" -c "import torch, transformers, timm, numpy; from transformers import SamProcessor, Pix2StructProcessor, CLIPImageProcessor; print('original env:', torch.__version__, transformers.__version__, timm.__version__, numpy.__version__)"
