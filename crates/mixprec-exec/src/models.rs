//! Built-in architectures as graphs, so the same executor trains them, quantizes them and
//! exports them to ONNX: LeNet-5 (the survey's MNIST benchmark) and ResNet-20 (the CIFAR-10
//! benchmark of DQ, ZeroQ and BP-NAS). Both take raw 0..255 pixels and normalise inside.

use mixprec_graph::{Dim, Graph, Node, Op, Tensor, ValueId, Window};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Architectures `mixprec train --arch` knows.
pub const ARCHITECTURES: &[(&str, &str)] = &[
    ("lenet5", "LeNet-5 for 28×28×1: conv6@5×5 – maxpool – conv16@5×5 – maxpool – fc120 – fc84 – fc10"),
    ("resnet20", "ResNet-20 for 32×32×3 (He et al. 2016): 3 stages × 3 basic blocks, 16/32/64 channels, BatchNorm"),
];

/// Incremental graph construction with seeded He-uniform initialisation.
pub struct GraphBuilder {
    /// The graph under construction.
    pub g: Graph,
    rng: ChaCha8Rng,
}

impl GraphBuilder {
    /// A new graph with one NCHW float input `input` of shape [N, c, h, w].
    pub fn new(name: &str, c: usize, h: usize, w: usize, seed: u64) -> (Self, ValueId) {
        let mut g = Graph {
            name: name.into(),
            opset: 13,
            ..Default::default()
        };
        let x = g.add_value("input");
        g.values[x].shape = Some(vec![
            Dim::Symbolic("N".into()),
            Dim::Fixed(c),
            Dim::Fixed(h),
            Dim::Fixed(w),
        ]);
        g.inputs.push(x);
        (
            Self {
                g,
                rng: ChaCha8Rng::seed_from_u64(seed),
            },
            x,
        )
    }

    /// Add a constant tensor.
    pub fn constant(&mut self, name: &str, t: Tensor) -> ValueId {
        let v = self.g.add_value(name);
        self.g.initializers.insert(v, t);
        v
    }

    fn uniform(&mut self, name: &str, shape: Vec<usize>, bound: f32) -> ValueId {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        self.constant(name, Tensor::f32(shape, data).expect("shape matches data"))
    }

    /// Add a node with one output and return the output.
    pub fn node(&mut self, name: &str, op: Op, inputs: Vec<ValueId>) -> ValueId {
        let out = self.g.add_value(name);
        self.g.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.into_iter().map(Some).collect(),
            outputs: vec![out],
        });
        out
    }

    /// Convolution with He-uniform weights (and a bias unless followed by BatchNorm).
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: ValueId,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> ValueId {
        let fan_in = (cin * k * k) as f32;
        let w = self.uniform(
            &format!("{name}.weight"),
            vec![cout, cin, k, k],
            (6.0 / fan_in).sqrt(),
        );
        let mut ins = vec![x, w];
        if bias {
            ins.push(self.uniform(&format!("{name}.bias"), vec![cout], 1.0 / fan_in.sqrt()));
        }
        let window = Window {
            kernel: vec![k, k],
            strides: vec![stride, stride],
            pads: vec![pad; 4],
            ..Default::default()
        };
        self.node(name, Op::Conv { window, group: 1 }, ins)
    }

    /// Fully connected layer as Gemm with transB (weight [out, in]).
    pub fn fc(&mut self, name: &str, x: ValueId, fin: usize, fout: usize) -> ValueId {
        let w = self.uniform(
            &format!("{name}.weight"),
            vec![fout, fin],
            (6.0 / fin as f32).sqrt(),
        );
        let b = self.uniform(
            &format!("{name}.bias"),
            vec![fout],
            1.0 / (fin as f32).sqrt(),
        );
        self.node(
            name,
            Op::Gemm {
                alpha: 1.0,
                beta: 1.0,
                trans_a: false,
                trans_b: true,
            },
            vec![x, w, b],
        )
    }

    /// BatchNorm with unit scale, zero shift, zero mean, unit variance.
    pub fn bn(&mut self, name: &str, x: ValueId, c: usize) -> ValueId {
        let s = self.constant(
            &format!("{name}.scale"),
            Tensor::f32(vec![c], vec![1.0; c]).expect("len"),
        );
        let b = self.constant(
            &format!("{name}.bias"),
            Tensor::f32(vec![c], vec![0.0; c]).expect("len"),
        );
        let m = self.constant(
            &format!("{name}.running_mean"),
            Tensor::f32(vec![c], vec![0.0; c]).expect("len"),
        );
        let v = self.constant(
            &format!("{name}.running_var"),
            Tensor::f32(vec![c], vec![1.0; c]).expect("len"),
        );
        self.node(name, Op::BatchNorm { epsilon: 1e-5 }, vec![x, s, b, m, v])
    }

    /// (x − mean[c]) / std[c] for raw 0..255 input.
    pub fn normalize(&mut self, x: ValueId, mean: &[f32], std: &[f32]) -> ValueId {
        let c = mean.len();
        let m = self.constant(
            "norm.mean",
            Tensor::f32(vec![1, c, 1, 1], mean.iter().map(|v| v * 255.0).collect()).expect("len"),
        );
        let s = self.constant(
            "norm.inv_std",
            Tensor::f32(
                vec![1, c, 1, 1],
                std.iter().map(|v| 1.0 / (v * 255.0)).collect(),
            )
            .expect("len"),
        );
        let y = self.node("norm_sub", Op::Sub, vec![x, m]);
        self.node("norm_mul", Op::Mul, vec![y, s])
    }

    /// Finish with `y` as the single output `logits`.
    pub fn finish(mut self, y: ValueId) -> Graph {
        self.g.values[y].name = "logits".into();
        self.g.outputs.push(y);
        self.g
    }
}

fn maxpool(b: &mut GraphBuilder, name: &str, x: ValueId) -> ValueId {
    b.node(
        name,
        Op::MaxPool(Window {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            ..Default::default()
        }),
        vec![x],
    )
}

/// LeNet-5 for MNIST-sized input (28×28, padded to keep 28×28 after the first conv).
pub fn lenet5(seed: u64) -> Graph {
    let (mut b, x) = GraphBuilder::new("lenet5", 1, 28, 28, seed);
    let x = b.normalize(x, &[0.1307], &[0.3081]);
    let y = b.conv("conv1", x, 1, 6, 5, 1, 2, true);
    let y = b.node("relu1", Op::Relu, vec![y]);
    let y = maxpool(&mut b, "pool1", y);
    let y = b.conv("conv2", y, 6, 16, 5, 1, 0, true);
    let y = b.node("relu2", Op::Relu, vec![y]);
    let y = maxpool(&mut b, "pool2", y);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
    let y = b.fc("fc1", y, 400, 120);
    let y = b.node("relu3", Op::Relu, vec![y]);
    let y = b.fc("fc2", y, 120, 84);
    let y = b.node("relu4", Op::Relu, vec![y]);
    let y = b.fc("fc3", y, 84, 10);
    b.finish(y)
}

/// ResNet-20 for CIFAR-10 (1×1 projection shortcuts where the shape changes).
pub fn resnet20(seed: u64) -> Graph {
    let (mut b, x) = GraphBuilder::new("resnet20", 3, 32, 32, seed);
    let x = b.normalize(x, &[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616]);
    let y = b.conv("conv1", x, 3, 16, 3, 1, 1, false);
    let y = b.bn("bn1", y, 16);
    let mut y = b.node("relu1", Op::Relu, vec![y]);
    let mut cin = 16;
    for (stage, cout) in [16usize, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", stage + 1, block);
            let h = b.conv(&format!("{p}.conv1"), y, cin, cout, 3, stride, 1, false);
            let h = b.bn(&format!("{p}.bn1"), h, cout);
            let h = b.node(&format!("{p}.relu1"), Op::Relu, vec![h]);
            let h = b.conv(&format!("{p}.conv2"), h, cout, cout, 3, 1, 1, false);
            let h = b.bn(&format!("{p}.bn2"), h, cout);
            let short = if stride != 1 || cin != cout {
                let s = b.conv(&format!("{p}.shortcut"), y, cin, cout, 1, stride, 0, false);
                b.bn(&format!("{p}.shortcut_bn"), s, cout)
            } else {
                y
            };
            let s = b.node(&format!("{p}.add"), Op::Add, vec![h, short]);
            y = b.node(&format!("{p}.relu2"), Op::Relu, vec![s]);
            cin = cout;
        }
    }
    let y = b.node("pool", Op::GlobalAveragePool, vec![y]);
    let y = b.node("flatten", Op::Flatten { axis: 1 }, vec![y]);
    let y = b.fc("fc", y, 64, 10);
    b.finish(y)
}

/// Build a named architecture.
pub fn build(arch: &str, seed: u64) -> Option<Graph> {
    match arch {
        "lenet5" => Some(lenet5(seed)),
        "resnet20" => Some(resnet20(seed)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn architectures_have_the_published_sizes() {
        let s = mixprec_graph::model_stats(&lenet5(0)).unwrap();
        // 156 + 2,416 + 48,120 + 10,164 + 850 parameters.
        assert_eq!(s.layers.iter().map(|l| l.params).sum::<u64>(), 61_706);
        assert_eq!(s.layers.len(), 5);
        let s = mixprec_graph::model_stats(&resnet20(0)).unwrap();
        let conv_fc: u64 = s.layers.iter().map(|l| l.params).sum();
        // ≈0.27 M weights as published (plus 2 projection shortcuts).
        assert!((268_000..280_000).contains(&conv_fc), "{conv_fc}");
        // 19 convolutions + 2 projection shortcuts (stages 2 and 3) + the classifier.
        assert_eq!(s.layers.len(), 19 + 2 + 1);
    }
}
