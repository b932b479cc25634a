//! `lazyvm image convert`: a root filesystem directory or an OCI image archive to a nydus
//! (or plain OCI) image, pushed to a registry. The work is `lazyvm::image`'s; this is the
//! command line, the credentials prompt and the Ctrl-C handling.

use std::io::BufRead;

use clap::{Args, Subcommand, ValueEnum};
use lazyvm::config::Config;
use lazyvm::image::{
    self, nydus, ConfigOverrides, ConvertRequest, Credentials, Format, ImageRef, Progress,
    PushOptions, Source,
};
use tokio::signal::unix::{signal, SignalKind};

/// Exit status of a failed conversion.
const FAILED: u8 = 1;

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Convert a rootfs directory or an OCI image archive to a nydus (or OCI) image and
    /// push it to a registry.
    Convert(ConvertArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// RAFS v6 data blob + bootstrap layer, pulled lazily by nydus-snapshotter.
    Nydus,
    /// One gzip tar layer of the whole rootfs.
    Oci,
}

#[derive(Args)]
struct ConvertArgs {
    /// What to convert: `oci-archive:PATH` (an OCI image layout tar, as `ctr images
    /// export` or `docker save` write it) or `dir:ROOTFS` (a root filesystem).
    #[arg(long, value_name = "oci-archive:PATH|dir:ROOTFS")]
    from: Source,
    /// Where to push: `HOST[:PORT]/REPO[:TAG]` (tag default: latest).
    #[arg(long, value_name = "HOST:PORT/REPO:TAG")]
    to: ImageRef,
    /// Talk plain HTTP to the registry (HTTPS otherwise).
    #[arg(long)]
    plain_http: bool,
    /// The image to build.
    #[arg(long, value_enum, default_value = "nydus")]
    format: FormatArg,
    /// The image's Cmd, one argument per --cmd (default for dir: `sh`; an archive's own
    /// otherwise).
    #[arg(long = "cmd", value_name = "ARG", allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Set an environment variable in the image's config (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Registry user name; the password is read from stdin (--password-stdin).
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password from the first line of stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
}

pub async fn image(config: &Config, args: ImageArgs) -> u8 {
    match args.command {
        ImageCommand::Convert(args) => convert(config, args).await,
    }
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err("--password-stdin: stdin gave no password".into());
    }
    Ok(password)
}

async fn convert(config: &Config, args: ConvertArgs) -> u8 {
    let credentials = match (args.username, args.password_stdin) {
        (Some(username), true) => match read_password() {
            Ok(password) => Credentials::Basic { username, password },
            Err(e) => {
                eprintln!("lazyvm: {e}");
                return FAILED;
            }
        },
        _ => Credentials::Anonymous,
    };
    let format = match args.format {
        FormatArg::Nydus => Format::Nydus,
        FormatArg::Oci => Format::Oci,
    };
    let nydus_image = match format {
        Format::Nydus => match nydus::find_nydus_image(&config.nydusd.path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("lazyvm: {e}");
                return FAILED;
            }
        },
        Format::Oci => Default::default(),
    };
    let req = ConvertRequest {
        source: args.from,
        target: args.to,
        format,
        overrides: ConfigOverrides {
            cmd: (!args.cmd.is_empty()).then_some(args.cmd),
            env: args.env,
        },
        nydus_image,
        push: PushOptions {
            plain_http: args.plain_http,
            credentials,
        },
    };
    let progress = Progress::stderr();
    // Ctrl-C / SIGTERM: ask the conversion to stop; it removes its files and returns.
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("lazyvm: cannot handle signals");
        return FAILED;
    };
    let canceller = progress.clone();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        canceller.cancel();
    });
    let result = image::convert(&req, &progress).await;
    watcher.abort();
    progress.clear();
    match result {
        Ok(report) => {
            println!("{report}");
            0
        }
        Err(e) => {
            eprintln!(
                "lazyvm: image convert --from {} --to {}: {}",
                req.source,
                req.target,
                lazyvm::image::push::error_chain(&e)
            );
            FAILED
        }
    }
}
