//! The writer against candle's reader: metadata of every value type, tensors of every type, alignments, errors.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use proptest::prelude::*;

use super::{write, TensorInfo, Value};
use crate::quant::{dequantize, quantize, QuantType};
use crate::rng::Rng;

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "trainer-core-gguf-write-{tag}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The names in the directory (to see that no temporary file is left behind).
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn every_value_type() -> Vec<(String, Value)> {
    let s = |x: &str| Value::String(x.to_string());
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60_000)),
        ("t.i16".into(), Value::I16(-30_000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.u64".into(), Value::U64(u64::MAX - 1)),
        ("t.i64".into(), Value::I64(i64::MIN + 1)),
        ("t.f32".into(), Value::F32(-1.5e-3)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.true".into(), Value::Bool(true)),
        ("t.false".into(), Value::Bool(false)),
        ("t.string".into(), s("héllo, wörld ✓")),
        ("t.empty_string".into(), s("")),
        (
            "t.strings".into(),
            Value::Array(vec![s("Ġa"), s("b c"), s("")]),
        ),
        (
            "t.i32s".into(),
            Value::Array(vec![Value::I32(1), Value::I32(-3)]),
        ),
        (
            "t.f64s".into(),
            Value::Array(vec![Value::F64(0.25), Value::F64(-8.0)]),
        ),
        (
            "t.bools".into(),
            Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        ),
        ("t.empty".into(), Value::Array(vec![])),
        (
            "t.nested".into(),
            Value::Array(vec![
                Value::Array(vec![Value::U8(1), Value::U8(2)]),
                Value::Array(vec![Value::U16(3)]),
            ]),
        ),
    ]
}

/// Every type, at a shape its blocks fit, with random data.
fn every_tensor_type(rng: &mut Rng) -> (Vec<TensorInfo>, Vec<Vec<u8>>) {
    let mut infos = Vec::new();
    let mut data = Vec::new();
    for (i, ty) in QuantType::ALL.into_iter().enumerate() {
        let dims = match i % 3 {
            0 => vec![3, 512],
            1 => vec![256],
            _ => vec![2, 1, 2, 256],
        };
        let n: usize = dims.iter().product();
        let mut bytes = Vec::new();
        quantize(ty, &rng.uniform(n, -1.0, 1.0), &mut bytes).unwrap();
        infos.push(TensorInfo::new(format!("blk.{i}.{}", ty.name()), ty, &dims));
        data.push(bytes);
    }
    (infos, data)
}

fn read(path: &Path) -> Content {
    Content::read(&mut File::open(path).unwrap()).unwrap()
}

#[test]
fn candle_reads_back_every_value_type_and_every_tensor_type() {
    let dir = Scratch::new("all");
    let mut rng = Rng::new(3);
    let (infos, data) = every_tensor_type(&mut rng);
    for align in [None, Some(1u32), Some(64), Some(4096)] {
        let mut md = every_value_type();
        if let Some(a) = align {
            md.push(("general.alignment".into(), Value::U32(a)));
        }
        let path = dir.0.join("m.gguf");
        let layout = write(&path, &md, &infos, |i, sink| {
            // In two pieces, as a streaming caller would.
            let (a, b) = data[i].split_at(data[i].len() / 3);
            sink.write(a)?;
            sink.write(b)
        })
        .unwrap();
        assert_eq!(dir.entries(), ["m.gguf"]);
        let a = u64::from(align.unwrap_or(32));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), layout.file_bytes);
        assert_eq!(layout.file_bytes % a, 0);
        let ct = read(&path);
        assert_eq!(ct.tensor_data_offset, layout.data_offset);
        assert_eq!(ct.metadata.len(), md.len());
        for (k, v) in &md {
            assert_eq!(format!("{:?}", ct.metadata[k]), format!("{v:?}"), "{k}");
        }
        let mut f = File::open(&path).unwrap();
        for ((info, bytes), offset) in infos.iter().zip(&data).zip(&layout.offsets) {
            let ti = &ct.tensor_infos[&info.name];
            assert_eq!(ti.offset, *offset);
            assert_eq!(ti.offset % a, 0);
            assert_eq!(ti.shape.dims(), info.dims.as_slice());
            assert_eq!(QuantType::from_ggml(ti.ggml_dtype), Some(info.ty));
            let q = ct.tensor(&mut f, &info.name, &Device::Cpu).unwrap();
            assert_eq!(&q.data().unwrap()[..], &bytes[..], "{}", info.name);
            let n = info.dims.iter().product();
            let mut ours = vec![0f32; n];
            dequantize(info.ty, bytes, &mut ours).unwrap();
            let theirs = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(ours, theirs, "{}", info.name);
        }
    }
}

#[test]
fn no_tensors_and_no_metadata_is_a_valid_file() {
    let dir = Scratch::new("empty");
    let path = dir.0.join("e.gguf");
    let layout = write::<&str>(&path, &[], &[], |_, _| unreachable!()).unwrap();
    assert_eq!(layout.file_bytes, 32);
    let ct = read(&path);
    assert!(ct.metadata.is_empty() && ct.tensor_infos.is_empty());
}

#[test]
fn bad_input_is_refused_and_leaves_no_file() {
    let dir = Scratch::new("bad");
    let path = dir.0.join("m.gguf");
    let t = |name: &str, ty, dims: &[usize]| TensorInfo::new(name, ty, dims);
    let ok_tensor = [t("a", QuantType::Q4_0, &[2, 64])];
    let ok_md = [("general.name", Value::String("x".into()))];
    // (metadata, tensors, what the error says)
    type Case<'a> = (Vec<(&'a str, Value)>, Vec<TensorInfo>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("k", Value::U8(1)), ("k", Value::U8(2))],
            vec![],
            "given twice",
        ),
        (vec![("", Value::U8(1))], vec![], "empty"),
        (
            vec![("k", Value::Array(vec![Value::U8(1), Value::I8(1)]))],
            vec![],
            "one type",
        ),
        (
            vec![("general.alignment", Value::U32(0))],
            vec![],
            "power of two",
        ),
        (
            vec![("general.alignment", Value::U32(48))],
            vec![],
            "power of two",
        ),
        (vec![("general.alignment", Value::U64(32))], vec![], "u32"),
        (
            ok_md.to_vec(),
            vec![t("a", QuantType::F32, &[2]), t("a", QuantType::F32, &[2])],
            "twice",
        ),
        (
            ok_md.to_vec(),
            vec![t(&"x".repeat(64), QuantType::F32, &[2])],
            "longer than 63",
        ),
        (
            ok_md.to_vec(),
            vec![t("a", QuantType::Q4K, &[2, 128])],
            "block length 256",
        ),
        (ok_md.to_vec(), vec![t("a", QuantType::F32, &[])], "1 to 4"),
        (
            ok_md.to_vec(),
            vec![t("a", QuantType::F32, &[1, 1, 1, 1, 1])],
            "1 to 4",
        ),
        (
            ok_md.to_vec(),
            vec![t("a", QuantType::F32, &[0, 4])],
            "empty dimension",
        ),
    ];
    for (md, tensors, want) in cases {
        let fill = |i: usize, sink: &mut super::TensorSink<'_>| {
            sink.write(&vec![0u8; tensors[i].data_bytes()? as usize])
        };
        let e = write(&path, &md, &tensors, fill).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted `{want}`)");
        assert!(dir.entries().is_empty(), "{:?}", dir.entries());
    }
    // The callback writes too little, too much, or fails: the error names the tensor; an existing file stays.
    std::fs::write(&path, b"old").unwrap();
    let short = write(&path, &ok_md, &ok_tensor, |_, s| s.write(&[0; 10])).unwrap_err();
    assert!(
        short.to_string().contains("`a`") && short.to_string().contains("10 of its 72"),
        "{short}"
    );
    let long = write(&path, &ok_md, &ok_tensor, |_, s| s.write(&[0; 73])).unwrap_err();
    assert!(long.to_string().contains("1 more bytes"), "{long}");
    let failed = write(&path, &ok_md, &ok_tensor, |_, _| {
        Err(crate::Error::Cancelled)
    })
    .unwrap_err();
    assert!(matches!(failed, crate::Error::Cancelled));
    assert_eq!(dir.entries(), ["m.gguf"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    // A directory that does not exist.
    let e = write(&dir.0.join("no/such/m.gguf"), &ok_md, &ok_tensor, |_, s| {
        s.write(&[0; 72])
    })
    .unwrap_err();
    assert!(e.to_string().contains("no/such"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn offsets_are_aligned_and_every_tensor_reads_back(
        seed in any::<u64>(),
        align_log in 0u32..9,
        shapes in prop::collection::vec((0usize..13, 1usize..4, 1usize..3), 1..6),
    ) {
        let dir = Scratch::new("prop");
        let mut rng = Rng::new(seed);
        let align = 1u32 << align_log;
        let md = [("general.alignment", Value::U32(align)), ("x", Value::String("y".repeat(seed as usize % 7)))];
        let mut infos = Vec::new();
        let mut data = Vec::new();
        for (i, (t, rows, blocks)) in shapes.into_iter().enumerate() {
            let ty = QuantType::ALL[t];
            let cols = blocks * ty.block_len().max(3);
            let mut bytes = Vec::new();
            quantize(ty, &rng.uniform(rows * cols, -2.0, 2.0), &mut bytes).unwrap();
            infos.push(TensorInfo::new(format!("t{i}"), ty, &[rows, cols]));
            data.push(bytes);
        }
        let path = dir.0.join("p.gguf");
        let layout = write(&path, &md, &infos, |i, s| s.write(&data[i])).unwrap();
        let ct = read(&path);
        prop_assert_eq!(ct.tensor_data_offset, layout.data_offset);
        prop_assert_eq!(layout.data_offset % u64::from(align), 0);
        let mut f = File::open(&path).unwrap();
        for (info, bytes) in infos.iter().zip(&data) {
            prop_assert_eq!(ct.tensor_infos[&info.name].offset % u64::from(align), 0);
            let q = ct.tensor(&mut f, &info.name, &Device::Cpu).unwrap();
            prop_assert_eq!(&q.data().unwrap()[..], &bytes[..]);
        }
    }
}
