"""PyTorch-exported models in mixprec against ONNX Runtime.

Exports small networks of the kinds users bring (a 2-layer LSTM and a bidirectional GRU
classifier, a Transformer encoder, a Conv1d audio net, a byte-level Embedding + Conv1d net, a
U-Net-like net with ConvTranspose / Upsample / Concat, and torchvision's MobileNetV3-small,
ResNet-18 and EfficientNet-B0), with random weights and non-trivial BatchNorm statistics, through
both `torch.onnx.export` paths (TorchScript, opset 17, and the dynamo exporter, opset 18, which
writes the weights as external data), then runs each with `mixprec run` and with ONNX Runtime on
the same random batch of 8 and prints the largest difference relative to the output's range.
Needs a venv with torch, torchvision, onnx, onnxscript and onnxruntime (made on first use at
--venv; ≈ 4 GB from PyPI); not part of CI.

Usage: python3 bench/torch_exports/check.py [--venv /tmp/mixprec-bench-venv] [--bin target/release/mixprec]
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = r'''
import glob, os, subprocess, sys
import numpy as np, onnxruntime as ort, torch, torch.nn as nn, torchvision
torch.manual_seed(0)
out, mixprec = sys.argv[1], sys.argv[2]
class LSTMCls(nn.Module):
    def __init__(s): super().__init__(); s.l=nn.LSTM(20,32,num_layers=2,batch_first=True); s.fc=nn.Linear(32,5)
    def forward(s,x): y,(h,c)=s.l(x); return s.fc(y[:,-1])
class GRUCls(nn.Module):
    def __init__(s): super().__init__(); s.l=nn.GRU(20,24,batch_first=True,bidirectional=True); s.fc=nn.Linear(48,5)
    def forward(s,x): y,h=s.l(x); return s.fc(y.mean(1))
class Tfm(nn.Module):
    def __init__(s):
        super().__init__(); s.inp=nn.Linear(16,32); s.enc=nn.TransformerEncoder(nn.TransformerEncoderLayer(32,4,64,batch_first=True,dropout=0.0),2); s.fc=nn.Linear(32,6)
    def forward(s,x): return s.fc(s.enc(s.inp(x)).mean(1))
class Audio(nn.Module):
    def __init__(s):
        super().__init__(); s.f=nn.Sequential(nn.Conv1d(1,16,9,padding=4),nn.BatchNorm1d(16),nn.ReLU(),nn.MaxPool1d(4),nn.Conv1d(16,32,5,stride=2),nn.BatchNorm1d(32),nn.ReLU(),nn.AdaptiveAvgPool1d(1)); s.fc=nn.Linear(32,8)
    def forward(s,x): return s.fc(s.f(x).flatten(1))
class Bytes(nn.Module):
    def __init__(s): super().__init__(); s.e=nn.Embedding(256,16); s.c=nn.Conv1d(16,32,3,padding=1); s.fc=nn.Linear(32,4)
    def forward(s,x): h=torch.relu(s.c(s.e(x).transpose(1,2))); return s.fc(h.amax(2))
class UNetish(nn.Module):
    def __init__(s):
        super().__init__(); s.d=nn.Conv2d(3,8,3,stride=2,padding=1); s.u=nn.ConvTranspose2d(8,8,2,stride=2); s.o=nn.Conv2d(11,4,1); s.up=nn.Upsample(scale_factor=2,mode='nearest')
    def forward(s,x):
        d=torch.relu(s.d(x)); u=s.u(d); u2=s.up(d)[:, :3]*0+x; return s.o(torch.cat([u,u2],1))
models={
 "lstm":(LSTMCls(),torch.randn(2,10,20)),
 "gru":(GRUCls(),torch.randn(2,10,20)),
 "transformer":(Tfm(),torch.randn(2,12,16)),
 "audio":(Audio(),torch.randn(2,1,400)),
 "bytes":(Bytes(),torch.randint(0,256,(2,24))),
 "unet":(UNetish(),torch.randn(2,3,32,32)),
 "mobilenet_v3":(torchvision.models.mobilenet_v3_small(num_classes=10),torch.randn(2,3,64,64)),
 "resnet18":(torchvision.models.resnet18(num_classes=10),torch.randn(2,3,64,64)),
 "efficientnet_b0":(torchvision.models.efficientnet_b0(num_classes=10),torch.randn(2,3,64,64)),
}
for name, (m, x) in models.items():
    m.eval()
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.2, 0.2); mod.running_var.uniform_(0.5, 1.5)
    for dyn in (False, True):
        f = f"{out}/{name}{'_dynamo' if dyn else ''}.onnx"
        if dyn:
            kw = dict(dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},), opset_version=18)
        else:
            kw = dict(dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
        try:
            torch.onnx.export(m, (x,), f, dynamo=dyn, input_names=["x"], output_names=["y"], **kw)
        except Exception as e:
            print(f"SKIP {os.path.basename(f)}: torch could not export it ({type(e).__name__})")
rng = np.random.default_rng(0)
bad = 0
files = sorted(glob.glob(f"{out}/*.onnx"))
for f in files:
    s = ort.InferenceSession(f); i = s.get_inputs()[0]
    shape = [8 if not isinstance(d, int) else d for d in i.shape]
    x = rng.integers(0, 256, shape).astype(np.int64) if "int64" in i.type else rng.standard_normal(shape).astype(np.float32)
    np.save(f"{out}/x.npy", x)
    ref = s.run(None, {i.name: x})[0]
    r = subprocess.run([mixprec, "run", f, "--input", f"{i.name}={out}/x.npy", "--output", f"{out}/out.npy"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        bad += 1
        print(f"FAIL {os.path.basename(f)}: {r.stderr.strip()[:300]}")
        continue
    got = np.load(f"{out}/out.npy")
    d = float(np.abs(got - ref).max() / max(1e-6, np.abs(ref).max()))
    bad += d >= 1e-4
    print(f"{'ok  ' if d < 1e-4 else 'DIFF'} {os.path.basename(f):<28} relative max difference {d:.2e}, output {tuple(got.shape)}")
print(f"{len(files) - bad}/{len(files)} exported models agree with ONNX Runtime {ort.__version__} within 1e-4 (torch {torch.__version__})")
sys.exit(1 if bad else 0)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default="/tmp/mixprec-bench-venv")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "mixprec"))
    ap.add_argument("--work", default="/tmp/mixprec-torch-exports")
    a = ap.parse_args()
    py = Path(a.venv) / "bin" / "python"
    need = [str(py), "-c", "import torch, torchvision, onnx, onnxscript, onnxruntime"]
    if not py.exists() or subprocess.run(need, capture_output=True).returncode != 0:
        if not py.exists():
            subprocess.check_call([sys.executable, "-m", "venv", a.venv])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "torch", "torchvision", "onnx",
                               "onnxscript", "onnxruntime", "numpy"])
    os.makedirs(a.work, exist_ok=True)
    sys.exit(subprocess.run([str(py), "-c", WORKER, a.work, a.bin]).returncode)


if __name__ == "__main__":
    main()
