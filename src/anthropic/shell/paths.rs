//! What a path word ([`super::words::Word::path`]) points at: a directory whose recursive
//! delete is a disaster (the filesystem root, a home directory, a system directory), or a file
//! that holds credentials.
//!
//! Invariants:
//! - `~`, `$HOME` and `/home/<anyone>`, `/Users/<anyone>`, `/root` are all homes, whoever the
//!   user is (an unknown or `$USER` name included);
//! - a trailing component that only globs (`*`, `.*`, `{*,.*}`, `.[!.]*`) names everything in
//!   its parent, so it is judged as the parent; `..` is resolved, `.` and empty components and
//!   trailing slashes are dropped;
//! - a relative path, or one that starts with an unknown expansion, is never protected (the
//!   working directory is not known).

use super::words::UNKNOWN;

const SYSTEM_TOP: &[&str] = &[
    "bin",
    "boot",
    "dev",
    "etc",
    "home",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "opt",
    "proc",
    "root",
    "sbin",
    "srv",
    "sys",
    "usr",
    "var",
    "Users",
    "System",
    "Library",
    "Applications",
    "private",
];

const SYSTEM_USR: &[&str] = &["bin", "sbin", "lib", "lib64", "local", "share", "include"];

fn only_glob(component: &str) -> bool {
    component.contains(['*', '?'])
        && component
            .chars()
            .all(|c| matches!(c, '*' | '?' | '.' | '{' | '}' | ',' | '[' | ']' | '!' | '^'))
}

/// The components of an absolute path with `~` read as a home, or `None` for a relative one.
fn components(path: &str) -> Option<Vec<&str>> {
    let (mut parts, rest) = if let Some(rest) = path.strip_prefix('~') {
        // `~` or `~user`: a home either way.
        let rest = rest.find('/').map_or("", |slash| &rest[slash..]);
        (vec!["home", "\u{1}"], rest)
    } else if path.starts_with('/') {
        (Vec::new(), path)
    } else {
        return None;
    };
    for component in rest.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    while parts.last().is_some_and(|last| only_glob(last)) {
        parts.pop();
    }
    Some(parts)
}

/// Whether a recursive delete of `path` wipes the root, a home or a system directory.
pub fn is_protected_dir(path: &str) -> bool {
    let Some(parts) = components(path) else {
        return false;
    };
    match parts.as_slice() {
        [] => true,
        [top] => SYSTEM_TOP.contains(top) || only_glob(top),
        ["home" | "Users", _user] => true,
        ["usr", sub] => SYSTEM_USR.contains(sub),
        ["private", "etc" | "var"] => true,
        _ => false,
    }
}

/// Credential files and directories, as path suffixes after a home (or anywhere).
const CREDENTIAL_PARTS: &[&str] = &[
    ".aws/credentials",
    ".aws/config",
    ".aws",
    ".ssh",
    ".config/gcloud",
    ".azure",
    ".kube/config",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    ".gnupg",
    ".config/gh/hosts.yml",
    ".config/gh",
    ".terraform.d/credentials.tfrc.json",
    ".terraform.d/credentials",
    ".vault-token",
    ".pgpass",
    "etc/shadow",
];

/// Whether `path` names a credential file or a directory of them (`~/.ssh`, `~/.ssh/id_rsa`,
/// `/Users/dev/.aws/credentials`, `.netrc`), public keys (`*.pub`, `known_hosts`) excepted.
pub fn is_credential(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix("/*").unwrap_or(path);
    if path.contains(UNKNOWN) && !path.contains('.') {
        return false;
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    if base.ends_with(".pub") || base == "known_hosts" || base == "authorized_keys" {
        return false;
    }
    if base.starts_with("id_rsa")
        || base.starts_with("id_ed25519")
        || base.starts_with("id_ecdsa")
        || base.starts_with("id_dsa")
        || base == ".env"
    {
        return true;
    }
    CREDENTIAL_PARTS.iter().any(|part| {
        path.match_indices(part).any(|(at, _)| {
            let before_ok = at == 0 || path[..at].ends_with('/') || path[..at].ends_with('~');
            let after = &path[at + part.len()..];
            before_ok && (after.is_empty() || after.starts_with('/'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_roots_and_system_dirs_are_protected() {
        for path in [
            "/",
            "/*",
            "~",
            "~/",
            "~/*",
            "~/{*,.*}",
            "~/.*",
            "/home/\u{1}",
            "/home/dev/",
            "/Users/dev",
            "/usr/local",
            "/etc",
            "/tmp/..",
            "//",
            "/home/*",
            "~bob",
        ] {
            assert!(is_protected_dir(path), "{path}");
        }
        for path in [
            "./build",
            "node_modules",
            "~/tmp/cache",
            "/tmp/build",
            "/var/lib/app/cache/*",
            "/home/dev/project/build",
            "\u{2}/",
            "dist/",
        ] {
            assert!(!is_protected_dir(path), "{path}");
        }
    }

    #[test]
    fn credential_paths_are_recognised() {
        for path in [
            "~/.aws/credentials",
            "/Users/dev/.ssh/id_rsa",
            "~/.ssh",
            "~/.ssh/",
            "/home/\u{1}/.netrc",
            ".git-credentials",
            "/etc/shadow",
            "~/.kube/config",
        ] {
            assert!(is_credential(path), "{path}");
        }
        for path in [
            "~/.ssh/id_rsa.pub",
            "~/.ssh/known_hosts",
            "README.md",
            "src/aws/config.rs",
            "my.awsome/file",
            "~/.sshrc",
        ] {
            assert!(!is_credential(path), "{path}");
        }
    }
}
