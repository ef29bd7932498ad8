//! ONNX backend node-test conformance: every test named in `tests/onnx-node-tests.txt` is
//! imported with mixprec-graph, run with the executor on each of its `test_data_set_*` inputs
//! and compared with the reference outputs (|got − want| ≤ 1e-5 + 1e-3·|want|, integers exactly).
//!
//! The test data is the `data/node` folder of the ONNX repository, packaged by Debian as
//! `libonnx-testdata` (`.ci/onnx-testdata.sh` installs it). Its location comes from
//! `ONNX_TESTDATA` (default `/usr/share/libonnx-testdata/data/node`). When the folder is absent
//! the test prints why and passes, unless `MIXPREC_REQUIRE_ONNX_TESTDATA=1`, which turns the
//! absence into a failure. `MIXPREC_ONNX_ONLY=substring` runs only the matching tests (and skips
//! the check that the list covers every test of a supported operator).

use candle_core::{DType, Device, Tensor as CTensor};
use mixprec_exec::Executor;
use mixprec_graph::onnx_proto as pb;
use mixprec_graph::{load_onnx, load_tensor_proto, tensor_from_proto, TensorData, SUPPORTED_OPS};
use prost::Message;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where Debian's `libonnx-testdata` puts the node tests.
const DEFAULT_DIR: &str = "/usr/share/libonnx-testdata/data/node";
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;

/// The list file: one enabled test per line; `# disabled: NAME reason` documents a test of a
/// supported operator that is deliberately not run; other `#` lines are comments.
struct TestList {
    enabled: Vec<String>,
    disabled: Vec<(String, String)>,
}

fn read_list() -> TestList {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx-node-tests.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut list = TestList {
        enabled: Vec::new(),
        disabled: Vec::new(),
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# disabled:") {
            let rest = rest.trim();
            let (name, reason) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            assert!(
                !reason.trim().is_empty(),
                "disabled test {name} in {} needs a reason",
                path.display()
            );
            list.disabled.push((name.into(), reason.trim().into()));
        } else if !line.is_empty() && !line.starts_with('#') {
            list.enabled.push(line.into());
        }
    }
    list
}

/// Print past the test harness's output capture, so the line shows in every run.
fn shout(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The node-test folder, or `None` (with a printed message) when it is absent and not required.
fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ONNX_TESTDATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    if dir.is_dir() {
        return Some(dir);
    }
    let required = std::env::var("MIXPREC_REQUIRE_ONNX_TESTDATA").is_ok_and(|v| v == "1");
    let msg = format!(
        "ONNX node test data not found at {}: install it with .ci/onnx-testdata.sh \
         (Debian package libonnx-testdata) or point ONNX_TESTDATA at its data/node folder",
        dir.display()
    );
    if required {
        panic!("{msg} (MIXPREC_REQUIRE_ONNX_TESTDATA=1)");
    }
    shout(&format!("SKIPPED onnx node conformance: {msg}"));
    None
}

/// Operator types of a test model (`domain:op` outside the default domain).
fn op_types(model: &Path) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(model).map_err(|e| e.to_string())?;
    let m = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    Ok(m.graph
        .map(|g| {
            g.node
                .iter()
                .map(|n| {
                    if n.domain.is_empty() || n.domain == "ai.onnx" {
                        n.op_type.clone()
                    } else {
                        format!("{}:{}", n.domain, n.op_type)
                    }
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Tests of the folder all of whose operators mixprec supports.
fn supported_tests(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let model = e.path().join("model.onnx");
        if !name.starts_with("test_") || !model.is_file() {
            continue;
        }
        if let Ok(ops) = op_types(&model) {
            if !ops.is_empty() && ops.iter().all(|o| SUPPORTED_OPS.contains(&o.as_str())) {
                out.insert(name);
            }
        }
    }
    out
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.pb")))
        .take_while(|p| p.is_file())
        .collect()
}

fn to_candle(t: &mixprec_graph::Tensor) -> Result<CTensor, String> {
    mixprec_exec::ops::from_host(t, &Device::Cpu).map_err(|e| e.to_string())
}

fn compare(k: usize, got: &CTensor, want: &pb::TensorProto) -> Result<(), String> {
    let want = tensor_from_proto(want).map_err(|e| format!("reference output {k}: {e}"))?;
    if got.dims() != want.shape.as_slice() {
        return Err(format!(
            "output {k}: shape {:?}, expected {:?}",
            got.dims(),
            want.shape
        ));
    }
    let is_int = |d: DType| matches!(d, DType::I64 | DType::U32 | DType::U8);
    match &want.data {
        TensorData::I64(w) => {
            if !is_int(got.dtype()) {
                return Err(format!(
                    "output {k}: dtype {:?}, expected an integer or boolean tensor",
                    got.dtype()
                ));
            }
            let g: Vec<i64> = got
                .to_dtype(DType::I64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?;
            if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
                return Err(format!(
                    "output {k}: element {i} is {}, expected {}",
                    g[i], w[i]
                ));
            }
        }
        TensorData::F32(w) => {
            if is_int(got.dtype()) {
                return Err(format!(
                    "output {k}: dtype {:?}, expected a float tensor",
                    got.dtype()
                ));
            }
            let g: Vec<f32> = got
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?;
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                let (a, b) = (a as f64, b as f64);
                let ok =
                    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= ATOL + RTOL * b.abs();
                if !ok {
                    return Err(format!("output {k}: element {i} is {a}, expected {b}"));
                }
            }
        }
    }
    Ok(())
}

/// Run one test folder; returns the number of data sets checked.
fn run_test(dir: &Path) -> Result<usize, String> {
    let g = load_onnx(dir.join("model.onnx")).map_err(|e| format!("import: {e}"))?;
    let n_in = g.inputs.len();
    let n_out = g.outputs.len();
    let exec = Executor::new(g).map_err(|e| format!("executor: {e}"))?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test_data_set_* folder".into());
    }
    for set in &sets {
        let set_name = set.file_name().unwrap_or_default().to_string_lossy();
        let inputs = numbered(set, "input")
            .iter()
            .map(|p| {
                let t = load_tensor_proto(p).map_err(|e| e.to_string())?;
                let t = tensor_from_proto(&t).map_err(|e| format!("input: {e}"))?;
                to_candle(&t)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.len() != n_in {
            return Err(format!(
                "{set_name}: {} input files for {n_in} graph inputs",
                inputs.len()
            ));
        }
        let wants = numbered(set, "output")
            .iter()
            .map(|p| load_tensor_proto(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if wants.len() != n_out {
            return Err(format!(
                "{set_name}: {} reference outputs for {n_out} graph outputs",
                wants.len()
            ));
        }
        let outs = exec
            .forward(&inputs)
            .map_err(|e| format!("{set_name}: run: {e}"))?;
        for (k, (got, want)) in outs.iter().zip(&wants).enumerate() {
            compare(k, got, want).map_err(|e| format!("{set_name}: {e}"))?;
        }
    }
    Ok(sets.len())
}

#[test]
fn onnx_node_tests() {
    let Some(dir) = data_dir() else { return };
    let list = read_list();
    let only = std::env::var("MIXPREC_ONNX_ONLY").ok();
    if only.is_none() {
        let supported = supported_tests(&dir);
        let listed: BTreeSet<&str> = list
            .enabled
            .iter()
            .map(String::as_str)
            .chain(list.disabled.iter().map(|(n, _)| n.as_str()))
            .collect();
        let missing: Vec<&str> = listed
            .iter()
            .copied()
            .filter(|n| !dir.join(n).is_dir())
            .collect();
        assert!(
            missing.is_empty(),
            "tests listed in onnx-node-tests.txt but absent from {}: {missing:?}",
            dir.display()
        );
        let uncovered: Vec<&String> = supported
            .iter()
            .filter(|n| !listed.contains(n.as_str()))
            .collect();
        assert!(
            uncovered.is_empty(),
            "{} tests use only supported operators but are neither enabled nor documented \
             as disabled in onnx-node-tests.txt:\n{}",
            uncovered.len(),
            uncovered
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let mut failures = Vec::new();
    let (mut passed, mut enabled, mut sets) = (0usize, 0usize, 0usize);
    for name in &list.enabled {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        enabled += 1;
        let path = dir.join(name);
        let res = std::panic::catch_unwind(|| run_test(&path))
            .unwrap_or_else(|_| Err("panicked (see the message above)".into()));
        match res {
            Ok(n) => {
                passed += 1;
                sets += n;
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    shout(&format!(
        "ONNX node tests: {passed}/{enabled} enabled tests passed ({sets} data sets, {} \
         disabled with a documented reason, data from {})",
        list.disabled.len(),
        dir.display()
    ));
    for f in &failures {
        shout(&format!("FAILED {f}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {enabled} enabled ONNX node tests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
