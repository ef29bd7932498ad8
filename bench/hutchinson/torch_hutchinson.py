"""PyTorch side of the Hutchinson benchmark: per-layer Hessian traces of an ONNX classifier.

Runs the same estimator as mixprec's `hessian-trace` metric (survey §3.2.3, HAWQ-V2 Eq. 21-22)
with PyTorch double backward: the ONNX graph is interpreted op by op with torch.nn.functional
(BatchNormalization in inference mode), the loss is the mean cross-entropy of the logits (the
input of a final Softmax), H·z comes from torch.autograd.grad(g·z) on the kept first-order graph.
`--estimator exact` computes the same traces exactly, as mixprec's `exact` estimator does:
for ReLU networks a layer's Hessian block is its Gauss-Newton block, so
Tr(H_i) = (1/N) sum_n sum_c ||d(u_nc . z_n)/dW_i||^2 with u_nc = sqrt(p_nc) (e_c - p_n): one
backward pass over the batch replicated once per class, then per-row weight gradients (unfold +
batched matmul for convolutions, outer products for Gemm). `--estimator logit-hutchinson` runs
Hutchinson's estimator on that factorisation with Rademacher probes in the logit space of each
sample (one row per sample and probe), as mixprec's `logit-hutchinson` does.
Prints one JSON object on stdout.
"""

import argparse
import gzip
import json
import resource
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_cifar(path, n):
    raw = open(path, "rb").read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)[:n]
    labels = rec[:, 0].astype(np.int64)
    x = rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32)
    return torch.from_numpy(x.copy()), torch.from_numpy(labels)


class OnnxNet:
    """A tiny interpreter for the operators of CIFAR ResNets exported to ONNX."""

    def __init__(self, path):
        m = onnx.load(path)
        self.graph = m.graph
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs(n)["value"]).copy())
        nodes = [n for n in m.graph.node if n.op_type != "Constant"]
        # The loss reads logits: drop a final Softmax.
        out = m.graph.output[0].name
        if nodes and nodes[-1].op_type in ("Softmax", "LogSoftmax") and nodes[-1].output[0] == out:
            out = nodes[-1].input[0]
            nodes = nodes[:-1]
        self.nodes, self.out = nodes, out
        self.layers = []  # (name, weight initializer name), ONNX node order
        for n in nodes:
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in self.consts:
                self.layers.append((n.name, n.input[1]))
        self.params = {w: self.consts[w].clone().requires_grad_(True) for _, w in self.layers}
        self.taps = None  # {layer name: (conv input after padding, attributes, output)} when set

    def __call__(self, x):
        env = dict(self.consts)
        env.update(self.params)
        env[self.graph.input[0].name] = x
        for n in self.nodes:
            a = attrs(n)
            i = [env[k] if k else None for k in n.input]
            t = n.op_type
            if t == "Conv":
                pads = list(a.get("pads", [0, 0, 0, 0]))
                xx = i[0]
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    xx = F.pad(xx, (pads[1], pads[3], pads[0], pads[2]))
                    pads = [0, 0, 0, 0]
                y = F.conv2d(xx, i[1], i[2] if len(i) > 2 else None, tuple(a.get("strides", [1, 1])),
                             (pads[0], pads[1]), tuple(a.get("dilations", [1, 1])), a.get("group", 1))
                if self.taps is not None:
                    y.retain_grad()
                    self.taps[n.name] = (xx, dict(a, pads=pads), y)
            elif t == "BatchNormalization":
                y = F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5))
            elif t == "Relu":
                y = F.relu(i[0])
            elif t == "Add":
                y = i[0] + i[1]
            elif t == "Sub":
                y = i[0] - i[1]
            elif t == "Mul":
                y = i[0] * i[1]
            elif t == "AveragePool":
                k = a["kernel_shape"]
                y = F.avg_pool2d(i[0], k, a.get("strides", k))
            elif t == "GlobalAveragePool":
                y = i[0].mean(dim=(2, 3), keepdim=True)
            elif t == "Flatten":
                y = i[0].flatten(a.get("axis", 1))
            elif t == "Reshape":
                y = i[0].reshape(i[0].shape[0], -1)
            elif t == "Gemm":
                w = i[1].t() if a.get("transB", 0) else i[1]
                y = i[0] @ w
                if len(i) > 2 and i[2] is not None:
                    y = y + i[2]
                if self.taps is not None:
                    y.retain_grad()
                    self.taps[n.name] = (i[0], a, y)
            elif t == "MatMul":
                y = i[0] @ i[1]
            else:
                raise SystemExit(f"torch_hutchinson.py: ONNX operator {t} (node {n.name}) is not supported")
            env[n.output[0]] = y
        return env[self.out]


def estimate(s):
    s = np.asarray(s, dtype=np.float64)
    m = len(s)
    mean = s.mean()
    var = s.var(ddof=1) if m > 1 else 0.0
    se = (var / m) ** 0.5
    rel = se / abs(mean) if mean != 0 else (0.0 if se == 0 else float("inf"))
    return {"trace": float(mean), "probes": m, "rel_stderr": float(rel)}


def row_norms(net, xr, u):
    """Per layer, the per-row squared norms ||d(u_r . z_r)/dW||^2 (one backward pass)."""
    net.taps = {}
    z = net(xr)
    (z * u).sum().backward()
    out = {}
    for name, _ in net.layers:
        xin, a, y = net.taps[name]
        d = y.grad
        if d.dim() == 4:
            if a.get("group", 1) != 1:
                raise SystemExit(f"{name}: grouped convolutions are not supported here")
            w = net.params[dict(net.layers)[name]]
            cols = F.unfold(xin.detach(), w.shape[2:], dilation=tuple(a.get("dilations", [1, 1])),
                            padding=(a["pads"][0], a["pads"][1]), stride=tuple(a.get("strides", [1, 1])))
            g = torch.bmm(d.flatten(2), cols.transpose(1, 2))
            out[name] = g.double().pow(2).flatten(1).sum(1)
        else:
            out[name] = xin.detach().double().pow(2).sum(1) * d.double().pow(2).sum(1)
    net.taps = None
    for w in net.params.values():
        w.grad = None
    return out


def exact_traces(net, x, rows):
    """Exact per-layer traces of the mean cross-entropy (see the module doc)."""
    with torch.no_grad():
        p = F.softmax(net(x), dim=1)
    n, c = p.shape
    per = max(1, min(c, rows // n))
    sums = {name: 0.0 for name, _ in net.layers}
    for c0 in range(0, c, per):
        cls = list(range(c0, min(c, c0 + per)))
        xr = x.repeat(len(cls), 1, 1, 1)
        u = torch.cat([p[:, k:k + 1].sqrt() * (F.one_hot(torch.full((n,), k), c).float() - p) for k in cls])
        for name, v in row_norms(net, xr, u).items():
            sums[name] += float(v.sum())
    return [dict(name=name, trace=sums[name] / n, probes=0, rel_stderr=0.0, joint=False, dropped=0, exact=True)
            for name, _ in net.layers]


def logit_hutchinson_traces(net, x, a, gen):
    """Hutchinson with Rademacher probes eps_n in the logit space of the same factorisation:
    r_n = sqrt(p_n) * eps_n - p_n (sqrt(p_n) . eps_n), E||J_n^T r_n||^2 = sum_c ||J_n^T u_nc||^2;
    one row per sample and round, rounds drawn in blocks of the number predicted to reach tol
    (at most doubling)
    (as mixprec's `logit-hutchinson`)."""
    with torch.no_grad():
        p = F.softmax(net(x), dim=1)
    n, c = p.shape
    q = p.sqrt()
    names = [name for name, _ in net.layers]
    samples = {name: [] for name in names}
    out = {}
    rounds, drawn, passes = a.min_probes, 0, 0
    while len(out) < len(names):
        for _ in range(rounds):
            eps = torch.randint(0, 2, (n, c), generator=gen, dtype=torch.float32) * 2 - 1
            e = q * eps
            u = e - p * e.sum(1, keepdim=True)
            norms = row_norms(net, x, u)
            passes += 1
            for name in names:
                if name not in out:
                    samples[name].append(float(norms[name].sum()) / n)
        drawn += rounds
        more = 1
        for name in names:
            if name in out:
                continue
            est = estimate(samples[name])
            if drawn >= a.max_probes or est["rel_stderr"] < a.tol:
                out[name] = dict(est, joint=True, dropped=0, exact=False)
            else:
                more = max(more, int(np.ceil(drawn * (est["rel_stderr"] / a.tol) ** 2)) - drawn)
        rounds = max(1, min(more, drawn, a.max_probes - drawn))
    return [dict(name=name, **out[name]) for name in names], passes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--cifar", required=True, help="CIFAR-10 binary (optionally .gz)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.05)
    ap.add_argument("--min-probes", type=int, default=8)
    ap.add_argument("--max-probes", type=int, default=256)
    ap.add_argument("--mode", choices=["joint", "per-layer"], default="joint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimator", choices=["hutchinson", "exact", "logit-hutchinson"], default="hutchinson")
    ap.add_argument("--rows", type=int, default=32, help="exact: (sample, class) rows per pass")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    t0 = time.perf_counter()
    net = OnnxNet(a.model)
    x, y = load_cifar(a.cifar, a.samples)
    gen = torch.Generator().manual_seed(a.seed)
    ws = [net.params[w] for _, w in net.layers]
    t1 = time.perf_counter()
    if a.estimator in ("exact", "logit-hutchinson"):
        if a.estimator == "exact":
            layers, passes = exact_traces(net, x, a.rows), 0
        else:
            layers, passes = logit_hutchinson_traces(net, x, a, gen)
        t2 = time.perf_counter()
        print(json.dumps({
            "tool": "torch " + torch.__version__, "threads": torch.get_num_threads(),
            "setup_s": t1 - t0, "estimate_s": t2 - t1, "passes": passes, "layers": layers,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }))
        return
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, ws, create_graph=True)
    # Same schedule as mixprec's hessian-trace: joint probes over the unfinished layers, a layer
    # predicted to need more than max_probes joint probes restarts alone; per-layer stopping.
    n = len(ws)
    samples = [[] for _ in ws]
    joint = [a.mode == "joint" and n > 1] * n
    dropped = [0] * n
    out = [None] * n
    passes = 0
    while any(o is None for o in out):
        groups = []
        j = [i for i in range(n) if out[i] is None and joint[i]]
        if j:
            groups.append(j)
        groups += [[i] for i in range(n) if out[i] is None and not joint[i]]
        for grp in groups:
            zs = [torch.randint(0, 2, ws[i].shape, generator=gen, dtype=torch.float32) * 2 - 1 for i in grp]
            s = sum((grads[i] * z).sum() for i, z in zip(grp, zs))
            hz = torch.autograd.grad(s, [ws[i] for i in grp], retain_graph=True)
            passes += 1
            for i, z, h in zip(grp, zs, hz):
                samples[i].append(float((z.double() * h.double()).sum()))
        n_joint = sum(1 for i in range(n) if out[i] is None and joint[i])
        for i in range(n):
            if out[i] is not None:
                continue
            e = estimate(samples[i])
            m = len(samples[i])
            if m >= a.max_probes or (m >= a.min_probes and e["rel_stderr"] < a.tol):
                out[i] = dict(e, joint=joint[i], dropped=dropped[i])
            elif joint[i] and n_joint > 1 and m >= a.min_probes:
                need = m * (e["rel_stderr"] / a.tol) ** 2
                if not need <= a.max_probes:
                    joint[i], dropped[i], samples[i] = False, m, []
    t2 = time.perf_counter()
    layers = [dict(name=n, **e) for (n, _), e in zip(net.layers, out)]
    print(json.dumps({
        "tool": "torch " + torch.__version__,
        "threads": torch.get_num_threads(),
        "setup_s": t1 - t0,
        "estimate_s": t2 - t1,
        "passes": passes,
        "loss": float(loss.detach()),
        "layers": layers,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


if __name__ == "__main__":
    sys.exit(main())
