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
    let static_binary = std::fs::read(busybox).is_ok_and(|elf| is_static_elf64(&elf));
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
    let build = Command::new("docker")
        .args(["build", "-q", "-t", DEMO_IMAGE])
        .arg(context.path())
        .output()
        .context("cannot run docker build")?;
    if !build.status.success() {
        bail!(
            "docker build of {DEMO_IMAGE} failed: {}",
            String::from_utf8_lossy(&build.stderr).trim()
        );
    }
    Ok(true)
}

/// A 64-bit little-endian ELF executable without a program interpreter (`PT_INTERP`): it runs in
/// an image that has no dynamic loader and no libc.
fn is_static_elf64(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count)).all(|i| {
        let at = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(size));
        u32_at(at).is_some_and(|kind| kind != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tells_static_from_dynamic_executables() {
        // /bin/sh is dynamic on Debian; the static busybox (when installed) is not.
        let sh = std::fs::read("/bin/sh").expect("/bin/sh is readable");
        assert!(!super::is_static_elf64(&sh));
        if let Ok(busybox) = std::fs::read("/bin/busybox") {
            assert!(super::is_static_elf64(&busybox));
        }
        assert!(!super::is_static_elf64(b"not an elf"));
    }
}
