//! The Debian package as an administrator gets it: built by cargo-deb,
//! installed with `dpkg -i` on this machine, the installed binary run.
//!
//! The package is made from the binary this suite built (a debug build),
//! not a release build: what is checked is the packaging (files, conffile,
//! unit, user, man page, completions), and a release build would double
//! the suite's compile time. `bash packaging/build-deb` makes the real one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_powa-fleet");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Purges the package however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "powa-fleet"])
            .output();
    }
}

fn build_package() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb");
    let _ = std::fs::remove_dir_all(&target);
    let release = target.join("release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy(BIN, release.join("powa-fleet")).unwrap();
    // Stripped here: compressing the debug information of a debug build
    // would take cargo-deb minutes.
    run(Command::new("strip").arg(release.join("powa-fleet")));
    let assets = release.join("assets");
    run(Command::new(release.join("powa-fleet"))
        .arg("generate-assets")
        .arg(&assets));
    run(Command::new("gzip")
        .arg("-9n")
        .arg(assets.join("powa-fleet.1")));
    let deb = target.join("powa-fleet.deb");
    run(Command::new("cargo")
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "-p",
            "powa-fleet",
            "--output",
        ])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    deb
}

#[test]
fn the_debian_package_installs_and_its_binary_runs() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "dpkg -i needs root: run the suite as root (bash tests/run)"
    );
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(
        cargo_deb.is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: cargo install cargo-deb (bash tests/run does it)"
    );
    let deb = build_package();
    let fields = stdout(Command::new("dpkg-deb").args(["--field"]).arg(&deb));
    assert!(fields.contains("Package: powa-fleet"), "{fields}");
    assert!(fields.contains("Depends: "), "{fields}");

    run(Command::new("dpkg").arg("-i").arg(&deb));
    let _installed = Installed;

    let version = stdout(Command::new("/usr/bin/powa-fleet").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("powa-fleet {}", env!("CARGO_PKG_VERSION"))
    );
    let conffiles =
        stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "powa-fleet"]));
    assert!(
        conffiles.contains("/etc/powa-fleet/powa-fleet.toml"),
        "{conffiles}"
    );
    let user = stdout(Command::new("getent").args(["passwd", "powa-fleet"]));
    assert!(
        user.contains("/usr/sbin/nologin") || user.contains("/bin/false"),
        "{user}"
    );
    let group =
        stdout(Command::new("stat").args(["-c", "%G %a", "/etc/powa-fleet/powa-fleet.toml"]));
    assert_eq!(group.trim(), "powa-fleet 640");
    let files = stdout(Command::new("dpkg").args(["-L", "powa-fleet"]));
    for path in [
        "/usr/share/man/man1/powa-fleet.1.gz",
        "/usr/share/bash-completion/completions/powa-fleet",
        "/usr/share/zsh/vendor-completions/_powa-fleet",
        "/usr/share/fish/vendor_completions.d/powa-fleet.fish",
        "/usr/share/doc/powa-fleet/examples/grafana-dashboard.json",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} not in\n{files}");
        assert!(Path::new(path).is_file(), "{path}");
    }
    let unit = files
        .lines()
        .find(|l| l.ends_with("/systemd/system/powa-fleet.service"))
        .unwrap_or_else(|| panic!("no unit in\n{files}"));
    let unit = std::fs::read_to_string(unit).unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    let page = stdout(Command::new("zcat").arg("/usr/share/man/man1/powa-fleet.1.gz"));
    assert!(page.contains("\\-\\-http\\-listen"), "{page}");

    // The installed binary reads the installed configuration.
    let config = stdout(
        Command::new("/usr/bin/powa-fleet")
            .args(["--config", "/etc/powa-fleet/powa-fleet.toml", "config"])
            .env("HOME", "/nonexistent"),
    );
    assert!(
        config.contains("repository.dsn = ")
            && config.contains("# from file /etc/powa-fleet/powa-fleet.toml"),
        "{config}"
    );
}
