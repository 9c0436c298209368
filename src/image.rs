//! The demo image: `rgrid-busybox:latest`, built `FROM scratch` with Debian's static busybox so
//! the quickstart and the tests run on an engine that cannot pull from any registry.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// The image the quickstart and the tests use.
pub const DEMO_IMAGE: &str = "rgrid-busybox:latest";

/// Where Debian's `busybox-static` package installs its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Makes sure `DEMO_IMAGE` exists locally; builds it when it is missing. Returns whether it built.
pub fn ensure_demo_image() -> anyhow::Result<bool> {
    let present = Command::new("docker")
        .args(["image", "inspect", DEMO_IMAGE])
        .output()
        .context("cannot run the docker CLI; is Docker installed?")?
        .status
        .success();
    if present {
        return Ok(false);
    }
    let busybox = Path::new(BUSYBOX);
    let static_binary = std::fs::read(busybox)
        .map(|bytes| !bytes.windows(11).any(|w| w == b"ld-linux-x8"))
        .unwrap_or(false);
    if !static_binary {
        bail!("{DEMO_IMAGE} is missing and {BUSYBOX} is not a static busybox; install Debian's busybox-static package (apt-get install busybox-static)");
    }
    let context = tempfile::tempdir().context("cannot create a build context")?;
    let bin = context.path().join("bin");
    std::fs::create_dir(&bin)?;
    std::fs::copy(busybox, bin.join("busybox")).context("cannot copy busybox")?;
    let applets = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY bin /bin\nENV PATH=/bin\nCMD [\"/bin/sh\"]\n",
    )?;
    let status = Command::new("docker")
        .args(["build", "-q", "-t", DEMO_IMAGE])
        .arg(context.path())
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run docker build")?;
    if !status.success() {
        bail!("docker build of {DEMO_IMAGE} failed");
    }
    Ok(true)
}
