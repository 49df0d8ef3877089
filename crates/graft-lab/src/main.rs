//! `graft-lab`: set up, inspect and use the cached kernel lab from the command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use graft_lab::{run_scenario, Lab, LabError, Scenario};

mod corpus_cmd;
mod demo;

#[derive(Parser)]
#[command(
    name = "graft-lab",
    version,
    about = "Cached Debian kernel lab (image, source, headers, kallsyms) and QEMU scenario runner"
)]
struct Cli {
    /// Lab root directory [default: $GRAFT_LAB_DIR or /var/cache/graft/lab]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install and cache everything (idempotent; the first run takes a few minutes)
    Setup {
        /// Set up this kernel release beside the others (e.g. 6.1.0-47-amd64, or `previous`:
        /// the newest downloadable one older than the current; `backports` or `trixie`: the
        /// current 6.12 kernel of bookworm-backports or of Debian 13) instead of Debian's
        /// current one; it does not become the lab's current release
        #[arg(long, value_name = "RELEASE")]
        release: Option<String>,
    },
    /// Show the lab's release, versions and paths
    Info {
        /// Another release the lab holds
        #[arg(long, value_name = "RELEASE")]
        release: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Capture /proc/kallsyms again by booting the kernel
    Kallsyms,
    /// Build a one-line fix with graft and show it live in a VM, before and after
    Demo {
        /// The graft binary to use
        #[arg(long, value_name = "PATH")]
        graft: PathBuf,
        /// The source fix
        #[arg(long, value_name = "FILE")]
        patch: PathBuf,
        /// Another release the lab holds (or `backports`, `trixie`: Linux 6.12)
        #[arg(long, value_name = "RELEASE")]
        release: Option<String>,
    },
    /// Build the real fixes of a Debian kernel update with graft, one per changed file, and load
    /// every built one in a VM booting the kernel they are for (see docs/corpus.md)
    Corpus(corpus_cmd::Args),
    /// Boot the lab kernel and run a shell script as root in the guest; prints the console
    Run {
        /// Host file with the script (`-` reads standard input)
        #[arg(required_unless_present = "command", conflicts_with = "command")]
        script: Option<PathBuf>,
        /// Script text given inline instead of a file
        #[arg(short = 'c', long, value_name = "TEXT")]
        command: Option<String>,
        /// Copy a host file into the guest: GUEST_PATH=HOST_PATH (repeatable)
        #[arg(long = "file", value_name = "GUEST=HOST", value_parser = parse_file_arg)]
        files: Vec<(String, PathBuf)>,
        /// Hard limit for the whole VM run, in seconds
        #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
        timeout: f64,
        /// Print only what the script printed (between the runner's markers)
        #[arg(long)]
        script_only: bool,
        /// Boot another release the lab holds (or `backports`, `trixie`)
        #[arg(long, value_name = "RELEASE")]
        release: Option<String>,
    },
}

fn parse_file_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((g, h)) if !g.is_empty() && !h.is_empty() => Ok((g.to_string(), PathBuf::from(h))),
        _ => Err(format!(
            "`{s}` is not GUEST=HOST (e.g. --file /root/p.ko=target/p.ko)"
        )),
    }
}

/// Prints text that may lack its final newline (the console ends mid-line at power-off).
fn print_block(text: &str) {
    print!("{text}");
    if !text.is_empty() && !text.ends_with('\n') {
        println!();
    }
}

fn print_summary(lab: &Lab) {
    println!("release        {}", lab.release);
    println!("debian version {}", lab.debian_version);
    println!("root           {}", lab.root.display());
    println!("vmlinuz        {}", lab.vmlinuz().display());
    println!("config         {}", lab.config().display());
    println!("modules        {}", lab.modules_dir().display());
    println!("source tree    {}", lab.source_tree().display());
    println!("make vars      {}", lab.source.make_vars.join(" "));
    println!("headers        {}", lab.headers().display());
    println!(
        "kallsyms       {} ({} symbols)",
        lab.kallsyms().display(),
        lab.kallsyms_lines
    );
    for a in &lab.source.config_adjustments {
        println!("config change  {a}");
    }
    for d in &lab.source.config_differences {
        println!("config differs {d}");
    }
}

/// Progress printer: elapsed time since start, on stderr so stdout stays parseable.
fn progress_printer() -> impl FnMut(&str) {
    let start = Instant::now();
    move |line: &str| eprintln!("[{:6.1}s] {line}", start.elapsed().as_secs_f64())
}

/// The lab's current release, another it holds, or a suite's (`backports`, `trixie`).
fn open_any(root: &std::path::Path, release: Option<String>) -> Result<Lab, LabError> {
    match release {
        None => Lab::open(root),
        Some(r) => match graft_debian::OtherSuite::parse(&r) {
            Some(suite) => Lab::open_suite(root, suite),
            None => Lab::open_release(root, &r),
        },
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let root = cli.root.unwrap_or_else(Lab::default_root);
    match cli.command {
        Cmd::Setup { release } => {
            let mut progress = progress_printer();
            let lab = match release {
                Some(r) if r == "previous" => {
                    let r = Lab::previous_release()?;
                    Lab::setup_release(&root, &r, &mut progress)?
                }
                Some(r) if graft_debian::OtherSuite::parse(&r).is_some() => {
                    let suite = graft_debian::OtherSuite::parse(&r).expect("checked");
                    Lab::setup_suite(&root, suite, &mut progress)?
                }
                Some(r) => Lab::setup_release(&root, &r, &mut progress)?,
                None => Lab::setup(&root, &mut progress)?,
            };
            print_summary(&lab);
        }
        Cmd::Info { json, release } => {
            let lab = open_any(&root, release)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lab.info_json())?);
            } else {
                print_summary(&lab);
            }
        }
        Cmd::Demo {
            graft,
            patch,
            release,
        } => {
            let lab = open_any(&root, release)?;
            demo::run(&lab, &graft, &patch)?;
        }
        Cmd::Corpus(args) => return corpus_cmd::run(&root, args),
        Cmd::Kallsyms => {
            let mut lab = Lab::open(&root)?;
            let mut progress = progress_printer();
            lab.recapture_kallsyms(&mut progress)?;
            println!(
                "{} ({} symbols)",
                lab.kallsyms().display(),
                lab.kallsyms_lines
            );
        }
        Cmd::Run {
            script,
            command,
            files,
            timeout,
            script_only,
            release,
        } => {
            if !(timeout.is_finite() && timeout > 0.0) {
                bail!("--timeout must be a positive number of seconds, got {timeout}");
            }
            let (name, text) = match (script, command) {
                (_, Some(c)) => ("inline".to_string(), c),
                (Some(p), None) if p.as_os_str() == "-" => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the script from standard input")?;
                    ("stdin".to_string(), s)
                }
                (Some(p), None) => {
                    let s = std::fs::read_to_string(&p)
                        .with_context(|| format!("reading script {}", p.display()))?;
                    (p.display().to_string(), s)
                }
                (None, None) => bail!("give a SCRIPT file or --command"),
            };
            let lab = open_any(&root, release)?;
            let sc = Scenario {
                name,
                files,
                script: text,
                timeout: Duration::from_secs_f64(timeout),
            };
            match run_scenario(&lab, &sc) {
                Ok(out) => {
                    let text = if script_only {
                        out.script_output()
                    } else {
                        out.console.as_str()
                    };
                    print_block(text);
                    eprintln!(
                        "graft-lab: script exited with {} after {:.1} s",
                        out.exit_code,
                        out.duration.as_secs_f64()
                    );
                    if out.exit_code != 0 {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                Err(e) => {
                    // The whole console is the most useful thing to see when the guest misbehaved.
                    if let Some(console) = e.console() {
                        print_block(console);
                    }
                    return Err(e.into());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors by itself.
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Console logs were printed already; keep the error itself short then.
            let short = e
                .downcast_ref::<LabError>()
                .filter(|le| le.console().is_some())
                .is_some();
            if short {
                eprintln!(
                    "graft-lab: error: {}",
                    e.to_string().lines().next().unwrap_or("")
                );
            } else {
                eprintln!("graft-lab: error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::FAILURE
        }
    }
}
