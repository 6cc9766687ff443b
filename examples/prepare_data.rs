//! Tokenizes a corpus into token shards and stops: the first half of a run, done once so that a cluster
//! job can prepare the data and many processes map the same shards.
//!
//!     cargo run --release --example prepare_data -- --data 'c4/en/c4-train.*-of-01024.json.gz' \
//!         --tokenizer t5/tokenizer.json
//!     cargo run --release --example prepare_data -- --data corpus/ --vocab-size 32000 --json
//!
//! The shards land where training looks for them (`$COLA_CACHE`, default `local/cache`, or
//! `--cache-dir`): a training run given the same `--data`, `--tokenizer` and cache starts at once. Run again
//! after adding or editing files, and only those files are tokenized.
use clap::Parser;
use cola::data::{tokenize_corpora, CorpusTokens, DataConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Tokenize a corpus into memory-mapped token shards.
#[derive(Parser, Debug)]
#[command(name = "prepare_data", version)]
struct Args {
    /// The corpus: a file, a folder, or a glob pattern of .txt / .jsonl / .json(.gz) files
    #[arg(long)]
    data: PathBuf,
    /// A separate validation corpus, tokenized too
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// A Hugging Face tokenizer.json; without it a byte-level BPE of --vocab-size entries is trained on
    /// the corpus (and cached)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Entries of the trained BPE (without --tokenizer)
    #[arg(long, default_value_t = 32000)]
    vocab_size: usize,
    /// Threads for tokenization [default: every core]
    #[arg(long)]
    threads: Option<usize>,
    /// Make a malformed JSON line an error instead of a skipped, counted line
    #[arg(long)]
    strict: bool,
    /// Cache root [default: $COLA_CACHE or local/cache]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Print the totals as one JSON object on stdout (progress and notes stay on stderr)
    #[arg(long)]
    json: bool,
}

/// What one corpus's preparation did and made.
#[derive(serde::Serialize)]
struct Totals {
    corpus: PathBuf,
    shard_dir: Option<PathBuf>,
    files: usize,
    files_tokenized: usize,
    files_reused: usize,
    documents: u64,
    malformed_lines: u64,
    /// Bytes on disk of all files, and of the files tokenized now.
    input_bytes: u64,
    tokenized_input_bytes: u64,
    /// Bytes of document text of all files, and of the files tokenized now.
    text_bytes: u64,
    tokenized_text_bytes: u64,
    /// Ids in the shards (one eos per document included), and made now.
    tokens: u64,
    tokenized_tokens: u64,
    max_id: Option<u32>,
    seconds: f64,
    /// Rates of this call's tokenization (zero when everything was reused).
    text_mb_per_s: f64,
    tokens_per_s: f64,
}

impl Totals {
    fn of(corpus: &CorpusTokens) -> Totals {
        let shards = corpus.shards.as_ref();
        let input_bytes =
            corpus.source.files.iter().filter_map(|(p, _)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let seconds = shards.map_or(0.0, |s| s.seconds);
        let tokenized_text_bytes = shards.map_or(0, |s| s.tokenized_text_bytes);
        let tokenized_tokens = shards.map_or(0, |s| s.tokenized_tokens);
        let rate = |amount: f64| if seconds > 0.0 { amount / seconds } else { 0.0 };
        Totals {
            corpus: corpus.source.path.clone(),
            shard_dir: shards.map(|s| s.dir.clone()),
            files: corpus.source.files.len(),
            files_tokenized: shards.map_or(0, |s| s.tokenized),
            files_reused: shards.map_or(0, |s| s.reused),
            documents: corpus.read.documents,
            malformed_lines: corpus.read.malformed_lines,
            input_bytes,
            tokenized_input_bytes: shards.map_or(0, |s| s.tokenized_bytes),
            text_bytes: corpus.read.text_bytes,
            tokenized_text_bytes,
            tokens: corpus.stream.num_tokens(),
            tokenized_tokens,
            max_id: corpus.max_id,
            seconds,
            text_mb_per_s: rate(tokenized_text_bytes as f64 / 1e6),
            tokens_per_s: rate(tokenized_tokens as f64),
        }
    }

    fn print(&self) {
        println!(
            "{}: {} files ({} tokenized, {} reused), {} documents, {:.1} MB on disk, {:.1} MB of text -> {} tokens \
             (largest id {})",
            self.corpus.display(),
            self.files,
            self.files_tokenized,
            self.files_reused,
            self.documents,
            self.input_bytes as f64 / 1e6,
            self.text_bytes as f64 / 1e6,
            self.tokens,
            self.max_id.map_or("-".into(), |id| id.to_string())
        );
        if self.files_tokenized > 0 {
            println!(
                "  tokenized {:.1} MB of text into {} tokens in {:.1} s: {:.2} MB/s, {:.0} tokens/s",
                self.tokenized_text_bytes as f64 / 1e6,
                self.tokenized_tokens,
                self.seconds,
                self.text_mb_per_s,
                self.tokens_per_s
            );
        }
        if self.malformed_lines > 0 {
            println!("  skipped {} malformed JSON lines", self.malformed_lines);
        }
        if let Some(dir) = &self.shard_dir {
            println!("  shards: {}", dir.display());
        }
    }
}

#[derive(serde::Serialize)]
struct Report {
    tokenizer: Option<PathBuf>,
    vocab_size: Option<usize>,
    threads: usize,
    train: Totals,
    val: Option<Totals>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        if let Err(err) = cola::train::set_threads(threads) {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    let config = DataConfig {
        data: Some(args.data),
        val_data: args.val_data,
        tokenizer: args.tokenizer,
        vocab_size: args.vocab_size,
        strict: args.strict,
        cache_dir: args.cache_dir,
        ..DataConfig::default()
    };
    let data = match tokenize_corpora(&config) {
        Ok(data) => data,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = Report {
        tokenizer: data.tokenizer_path.clone(),
        vocab_size: data.tokenizer.as_ref().map(|t| t.vocab_size()),
        threads: rayon::current_num_threads(),
        train: Totals::of(&data.train),
        val: data.val.as_ref().map(Totals::of),
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        if let Some(path) = &report.tokenizer {
            println!("tokenizer: {} ({} entries)", path.display(), report.vocab_size.unwrap_or(0));
        }
        report.train.print();
        if let Some(val) = &report.val {
            val.print();
        }
    }
    ExitCode::SUCCESS
}
