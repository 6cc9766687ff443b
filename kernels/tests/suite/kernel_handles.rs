//! The typed kernel handles and the kernel sources agree, checked on the CPU (no GPU, no NVRTC): the set of
//! `(module, symbol)` pairs of `Kernel::ALL` equals the set of `extern "C" __global__` functions declared in
//! `kernels/cuda/*.cu` (no handle without a kernel, no kernel without a handle), every module embeds exactly
//! its file, and handle indices are the positions the device tables rely on. Names are compared exactly, so
//! there is no tolerance.
//!
//! Kernels are declared either directly (`extern "C" __global__ void fill_f32(...)`) or in a function-like
//! macro with token pasting (`#define COPY(S, D) extern "C" __global__ void copy_##S##_##D(...)`) that is
//! then instantiated (`COPY(f32, bf16)`); the reader below handles both, and fails on any `__global__` it
//! cannot read, so a new declaration style cannot slip past it.
#![cfg(feature = "cuda")]
use cola_kernels::cuda::compile::SOURCES;
use cola_kernels::cuda::{Kernel, Module};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const DECLARATION: &str = "extern \"C\" __global__ void ";

/// `source` without `//` comments, with backslash-continued lines joined: one logical line each.
fn logical_lines(source: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in source.lines() {
        let line = raw.find("//").map_or(raw, |i| &raw[..i]);
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines.push(current);
    lines
}

/// The names after each kernel declaration in `text` (up to the parameter list, `##` markers kept).
fn declared_names(text: &str) -> Vec<String> {
    let names: Vec<String> = text
        .match_indices(DECLARATION)
        .map(|(at, _)| {
            let rest = &text[at + DECLARATION.len()..];
            rest[..rest.find('(').expect("a kernel declaration has a parameter list")].trim().to_string()
        })
        .collect();
    assert_eq!(
        names.len(),
        text.matches("__global__").count(),
        "a __global__ not declared as {DECLARATION:?}: {text}"
    );
    names
}

/// A function-like macro that declares kernels: its parameters and the kernel names of its body.
struct KernelMacro {
    params: Vec<String>,
    names: Vec<String>,
}

/// `template` with every `##`-separated piece that is a parameter replaced by its argument.
fn expand(template: &str, params: &[String], args: &[String]) -> String {
    template
        .split("##")
        .map(|piece| {
            let piece = piece.trim();
            params.iter().position(|p| p == piece).map_or(piece, |i| args[i].as_str()).to_string()
        })
        .collect()
}

/// The comma-separated arguments of every instantiation `name(...)` in `line`.
fn instantiations(line: &str, name: &str) -> Vec<Vec<String>> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (at, _) in line.match_indices(&format!("{name}(")) {
        if line[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &line[at + name.len() + 1..];
        let args = &rest[..rest.find(')').expect("an instantiation is closed")];
        found.push(args.split(',').map(|a| a.trim().to_string()).collect());
    }
    found
}

/// Every kernel symbol declared by one `.cu` source (direct declarations and macro instantiations).
fn kernels_of(source: &str) -> BTreeSet<String> {
    let mut macros: BTreeMap<String, KernelMacro> = BTreeMap::new();
    let mut symbols = BTreeSet::new();
    let mut body_lines = Vec::new();
    for line in logical_lines(source) {
        let Some(define) = line.trim_start().strip_prefix("#define ") else {
            body_lines.push(line);
            continue;
        };
        let names = declared_names(define);
        if names.is_empty() {
            continue;
        }
        let open = define.find('(').expect("a kernel macro takes parameters");
        let close = define.find(')').expect("a kernel macro's parameter list is closed");
        let params = define[open + 1..close].split(',').map(|p| p.trim().to_string()).collect();
        macros.insert(define[..open].trim().to_string(), KernelMacro { params, names });
    }
    for line in &body_lines {
        symbols.extend(declared_names(line));
        for (name, m) in &macros {
            for args in instantiations(line, name) {
                assert_eq!(args.len(), m.params.len(), "{name} instantiated with {args:?}");
                symbols.extend(m.names.iter().map(|t| expand(t, &m.params, &args)));
            }
        }
    }
    symbols
}

fn cuda_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cuda")
}

/// `(file stem, contents)` of every `kernels/cuda/*.cu`, sorted by stem.
fn cu_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(cuda_dir())
        .expect("kernels/cuda is readable")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "cu"))
        .map(|path| {
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("a UTF-8 file name").to_string();
            (stem, std::fs::read_to_string(&path).expect("a readable source"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_reader_finds_direct_and_macro_declared_kernels() {
    let source = "// extern \"C\" __global__ void not_a_kernel(int x)\n\
        #define HELPER(x) ((x) + 1)\n\
        #define PAIR(NAME, T) \\\n    extern \"C\" __global__ void NAME##_##T(T* y) { } \\\n\
        \x20   extern \"C\" __global__ void NAME##_back_##T(T* y) { }\n\
        PAIR(scale, f32)\n\
        PAIR(scale, bf16) PAIR(shift, f32)\n\
        extern \"C\" __global__ void plain(float* y) { y[0] = HELPER(1); }\n";
    let expected = [
        "plain",
        "scale_back_bf16",
        "scale_back_f32",
        "scale_bf16",
        "scale_f32",
        "shift_back_f32",
        "shift_f32",
    ];
    assert_eq!(kernels_of(source), expected.iter().map(|s| s.to_string()).collect());
}

#[test]
fn every_handle_names_a_kernel_and_every_kernel_has_a_handle() {
    let in_sources: BTreeSet<(String, String)> = cu_files()
        .iter()
        .flat_map(|(stem, code)| kernels_of(code).into_iter().map(move |symbol| (stem.clone(), symbol)))
        .collect();
    let handles: BTreeSet<(String, String)> =
        Kernel::ALL.iter().map(|k| (k.module().name().to_string(), k.symbol().to_string())).collect();
    let without_kernel: Vec<_> = handles.difference(&in_sources).collect();
    let without_handle: Vec<_> = in_sources.difference(&handles).collect();
    assert!(without_kernel.is_empty(), "handles naming no kernel: {without_kernel:?}");
    assert!(without_handle.is_empty(), "kernels without a handle: {without_handle:?}");
    assert_eq!(handles.len(), Kernel::ALL.len(), "two handles name the same kernel");
    assert!(in_sources.len() > 60, "only {} kernels read from the sources", in_sources.len());
}

#[test]
fn handle_indices_are_table_positions() {
    assert_eq!(Kernel::COUNT, Kernel::ALL.len());
    for (i, k) in Kernel::ALL.iter().enumerate() {
        assert_eq!(k.index(), i, "{k:?}");
    }
    for (i, m) in Module::ALL.iter().enumerate() {
        assert_eq!(m.index(), i, "{m:?}");
        assert!(m.kernels().all(|k| k.module() == *m) && m.kernels().next().is_some(), "{m:?}");
    }
}

#[test]
fn every_module_embeds_its_own_file() {
    let files = cu_files();
    let stems: BTreeSet<&str> = files.iter().map(|(stem, _)| stem.as_str()).collect();
    let modules: BTreeSet<&str> = Module::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(modules, stems, "modules and kernels/cuda/*.cu differ");
    assert_eq!(SOURCES.len(), Module::ALL.len());
    for (stem, code) in &files {
        let module = Module::ALL.iter().find(|m| m.name() == stem).expect("checked above");
        assert_eq!(module.source().code, code, "{stem}.cu differs from the source embedded for {module:?}");
        assert!(SOURCES.iter().any(|s| s.name == stem && s.code == code), "{stem}.cu missing from SOURCES");
    }
}
