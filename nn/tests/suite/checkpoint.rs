//! Safetensors checkpoints: reference names and layouts, bit-identical round trips, dtype conversion,
//! and errors (not panics) for missing, truncated, corrupt and mismatched files.
use cola_nn::{load_safetensors, save_safetensors_as, Llama, LlamaConfig, NnError, ParamKind, WEIGHTS_FILE};
use cola_tensor::{bf16, DType, Rng};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

fn model(name: &str, seed: u64) -> Llama {
    Llama::new(LlamaConfig::preset(name).unwrap(), &mut Rng::new(seed)).unwrap()
}

fn bits(model: &Llama) -> Vec<Vec<u32>> {
    model
        .parameters()
        .iter()
        .map(|p| p.value().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn only_file_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn round_trip_is_bit_identical() {
    for name in ["cola-tiny", "full-tiny"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WEIGHTS_FILE);
        let saved = model(name, 1);
        saved.save_safetensors(&path).unwrap();
        assert_eq!(only_file_in(dir.path()), vec![WEIGHTS_FILE.to_string()], "no temp file left behind");
        let mut loaded = model(name, 2);
        assert_ne!(bits(&saved), bits(&loaded));
        let ids: Vec<_> = loaded.parameters().iter().map(|p| p.id()).collect();
        loaded.load_safetensors(&path).unwrap();
        assert_eq!(bits(&saved), bits(&loaded), "{name}");
        let after: Vec<_> = loaded.parameters().iter().map(|p| p.id()).collect();
        assert_eq!(ids, after, "loading keeps parameter identities");
        let fresh = Llama::from_safetensors(saved.config().clone(), &path, DType::F32).unwrap();
        assert_eq!(bits(&saved), bits(&fresh), "{name}");
    }
}

#[test]
fn file_holds_exactly_the_reference_names_and_layouts() {
    for name in ["cola-tiny", "full-tiny"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WEIGHTS_FILE);
        let model = model(name, 3);
        model.save_safetensors(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut in_file: Vec<(String, Vec<usize>)> =
            file.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect();
        in_file.sort();
        let mut expected: Vec<(String, Vec<usize>)> = model
            .config()
            .parameter_shapes()
            .into_iter()
            .map(|(n, s, kind)| (n, if kind == ParamKind::Dense { vec![s[1], s[0]] } else { s }))
            .collect();
        expected.sort();
        assert_eq!(in_file, expected, "{name}");
        assert!(file.tensors().iter().all(|(_, v)| v.dtype() == Dtype::F32));

        let (d, v) = (32, 64);
        let head = file.tensor("lm_head.weight").unwrap();
        assert_eq!(head.shape(), &[v, d], "lm_head is [vocab, d] on disk");
        let on_disk: Vec<f32> =
            head.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let in_memory = model.lm_head().weight().value().to_vec::<f32>().unwrap();
        for (o, i) in [(0, 0), (3, 17), (63, 31)] {
            assert_eq!(on_disk[o * d + i], in_memory[i * v + o], "disk[{o}][{i}] = memory[{i}][{o}]");
        }
        let table = file.tensor("model.embed_tokens.weight").unwrap();
        assert_eq!(table.shape(), &[v, d], "the embedding is not transposed");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    model("full-tiny", 4).save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("model.layers.1.mlp.up_proj.weight").unwrap().shape(), &[48, 32]);
    assert_eq!(file.tensor("model.layers.1.mlp.down_proj.weight").unwrap().shape(), &[32, 48]);
}

#[test]
fn bf16_and_f64_files_convert_to_the_model_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let saved = model("cola-tiny", 5);

    let path64 = dir.path().join("f64.safetensors");
    save_safetensors_as(&saved, &path64, DType::F64).unwrap();
    let mut loaded = model("cola-tiny", 6);
    load_safetensors(&mut loaded, &path64).unwrap();
    assert_eq!(bits(&saved), bits(&loaded), "f32 -> f64 -> f32 is exact");

    let path16 = dir.path().join("bf16.safetensors");
    save_safetensors_as(&saved, &path16, DType::BF16).unwrap();
    let bytes = std::fs::read(&path16).unwrap();
    assert!(SafeTensors::deserialize(&bytes)
        .unwrap()
        .tensors()
        .iter()
        .all(|(_, v)| v.dtype() == Dtype::BF16));
    load_safetensors(&mut loaded, &path16).unwrap();
    for (a, b) in saved.parameters().iter().zip(loaded.parameters()) {
        let rounded: Vec<f32> =
            a.value().to_vec::<f32>().unwrap().iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(rounded, b.value().to_vec::<f32>().unwrap(), "{}", a.name());
    }

    let config = saved.config().clone();
    let as_bf16 = Llama::from_safetensors(config.clone(), &path16, DType::BF16).unwrap();
    assert!(as_bf16.parameters().iter().all(|p| p.value().dtype() == DType::BF16));
    let as_f64 = Llama::from_safetensors(config, &path64, DType::F64).unwrap();
    for (a, b) in saved.parameters().iter().zip(as_f64.parameters()) {
        assert_eq!(b.value().dtype(), DType::F64);
        assert_eq!(a.value().to_vec_f64(), b.value().to_vec_f64(), "{}", a.name());
    }
}

#[test]
fn missing_truncated_and_corrupt_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = model("cola-tiny", 7);
    let before = bits(&target);

    let missing = dir.path().join("nothing.safetensors");
    let err = load_safetensors(&mut target, &missing).unwrap_err();
    assert!(matches!(err, NnError::Io { .. }) && err.to_string().contains("nothing.safetensors"), "{err}");

    let path = dir.path().join(WEIGHTS_FILE);
    model("cola-tiny", 8).save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let cut = dir.path().join(format!("cut{keep}.safetensors"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let err = load_safetensors(&mut target, &cut).unwrap_err();
        assert!(matches!(err, NnError::Format { .. }), "{keep} bytes: {err}");
        assert!(err.to_string().contains(&format!("cut{keep}")), "{err}");
    }
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, [0xffu8; 64]).unwrap();
    assert!(matches!(load_safetensors(&mut target, &garbage), Err(NnError::Format { .. })));
    assert_eq!(before, bits(&target), "a failed load changes nothing");
}

#[test]
fn mismatched_files_name_every_offending_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    model("cola-tiny", 9).save_safetensors(&path).unwrap();

    let mut full = model("full-tiny", 10);
    let before = bits(&full);
    let err = full.load_safetensors(&path).unwrap_err();
    let NnError::Mismatch { missing, unexpected, misshaped, .. } = &err else { panic!("{err}") };
    assert_eq!(missing.len(), 14);
    assert_eq!(unexpected.len(), 28);
    assert!(misshaped.is_empty());
    assert!(missing.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
    assert!(unexpected.contains(&"model.layers.1.mlp.down_proj.cola_b".to_string()));
    assert_eq!(before, bits(&full));

    let wider = LlamaConfig { rank: Some(4), ..LlamaConfig::preset("cola-tiny").unwrap() };
    let mut other = Llama::new(wider, &mut Rng::new(11)).unwrap();
    let err = other.load_safetensors(&path).unwrap_err();
    let NnError::Mismatch { missing, unexpected, misshaped, .. } = &err else { panic!("{err}") };
    assert!(missing.is_empty() && unexpected.is_empty());
    assert_eq!(misshaped.len(), 28);
    let q_a = misshaped.iter().find(|(n, ..)| n == "model.layers.0.self_attn.q_proj.cola_a").unwrap();
    assert_eq!((q_a.1.clone(), q_a.2.clone()), (vec![32, 4], vec![32, 8]));
    assert!(
        err.to_string().contains("model.layers.0.self_attn.q_proj.cola_a expected [32, 4] got [32, 8]"),
        "{err}"
    );

    let deeper = LlamaConfig { n_layers: 3, ..LlamaConfig::preset("cola-tiny").unwrap() };
    let err = Llama::from_safetensors(deeper, &path, DType::F32).unwrap_err();
    assert!(err.to_string().contains("model.layers.2.input_layernorm.weight"), "{err}");
}

#[test]
fn save_replaces_an_existing_file_and_rejects_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    model("cola-tiny", 12).save_safetensors(&path).unwrap();
    let second = model("cola-tiny", 13);
    second.save_safetensors(&path).unwrap();
    let mut loaded = model("cola-tiny", 14);
    loaded.load_safetensors(&path).unwrap();
    assert_eq!(bits(&second), bits(&loaded));
    assert_eq!(only_file_in(dir.path()), vec![WEIGHTS_FILE.to_string()]);

    let no_dir = dir.path().join("absent").join(WEIGHTS_FILE);
    assert!(matches!(second.save_safetensors(&no_dir), Err(NnError::Io { .. })));
    assert!(second.save_safetensors(dir.path()).is_err(), "a directory is not a file");
    assert_eq!(only_file_in(dir.path()), vec![WEIGHTS_FILE.to_string()]);
}

#[test]
fn integer_tensors_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let source = model("cola-tiny", 15);
    let shapes = source.config().parameter_shapes();
    let buffers: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = source
        .parameters()
        .iter()
        .zip(&shapes)
        .map(|(p, (name, shape, kind))| {
            let shape = if *kind == ParamKind::Dense { vec![shape[1], shape[0]] } else { shape.clone() };
            let dtype = if name == "model.norm.weight" { Dtype::I32 } else { Dtype::F32 };
            (p.name().to_string(), shape, vec![0u8; 4 * p.value().numel()], dtype)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(n, s, b, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = dir.path().join(WEIGHTS_FILE);
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut target = model("cola-tiny", 16);
    let before = bits(&target);
    let err = target.load_safetensors(&path).unwrap_err();
    assert!(matches!(err, NnError::UnsupportedDType { .. }), "{err}");
    assert!(err.to_string().contains("\"model.norm.weight\" has dtype I32"), "{err}");
    assert_eq!(before, bits(&target));
}
