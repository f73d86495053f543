//! The shipped example configs (`deploy/examples/*.toml`) validate to the modes they document,
//! and the auth/profile/TLS keys are validated with errors naming the key.

use std::path::Path;
use streammask::config::{FileConfig, Overrides};
use streammask::policy::credentials::CredentialsMode;

fn example(name: &str) -> streammask::config::Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/examples")
        .join(name);
    FileConfig::load(Some(&path))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .validate()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn examples_validate_to_their_modes() {
    let none = example("none.toml");
    assert!(!none.auth.enabled());
    assert_eq!(none.upstream.credentials, CredentialsMode::Passthrough);

    let url = example("jwt-jwks-url.toml");
    let jwt = url.auth.jwt.as_ref().unwrap();
    assert!(matches!(
        jwt.source,
        streammask::policy::auth::KeySource::Url(_)
    ));
    assert_eq!(url.upstream.credentials, CredentialsMode::Inject);

    let discovery = example("jwt-oidc-discovery.toml");
    let jwt = discovery.auth.jwt.as_ref().unwrap();
    assert_eq!(
        jwt.source,
        streammask::policy::auth::KeySource::Discovery(
            "https://login.example.com/realms/engineering/.well-known/openid-configuration".into()
        )
    );
    assert_eq!(jwt.groups_claim, ["realm_access", "roles"]);
    assert_eq!(jwt.audience.len(), 2);

    let file = example("jwt-jwks-file.toml");
    assert!(matches!(
        file.auth.jwt.as_ref().unwrap().source,
        streammask::policy::auth::KeySource::File(_)
    ));

    let keys = example("static-keys.toml");
    assert!(keys.auth.jwt.is_none() && keys.auth.static_keys.len() == 2);
    assert_eq!(keys.known_groups, ["ci"]);

    let combined = example("combined-tls-profiles.toml");
    assert!(combined.auth.jwt.is_some() && combined.auth.static_keys_enabled);
    assert!(combined.tls.as_ref().unwrap().http2);
    assert!(combined.upstream.ca_file.is_some() && combined.upstream.tls);
    let names: Vec<&str> = combined.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["contractors", "employees", "ci", "default"]);
    for group in ["contractors", "engineering", "ci"] {
        assert!(combined.known_groups.iter().any(|g| g == group), "{group}");
    }
}

#[test]
fn auth_errors_name_their_key() {
    let local = Overrides {
        upstream: Some("http://127.0.0.1:1".into()),
        ..Default::default()
    };
    let cases = [
        ("[auth]\nmode = \"kerberos\"\n", "auth"),
        (
            "[auth]\nmode = \"jwt\"\nissuer = \"https://i\"\naudience = \"a\"\n",
            "upstream.credentials",
        ),
        (
            "[upstream]\napi_key_env = \"X\"\napi_key_file = \"/k\"\n",
            "upstream.api_key_env",
        ),
        (
            "[upstream]\ncredentials = \"passthrough\"\napi_key_env = \"X\"\n",
            "upstream.credentials",
        ),
        ("[upstream]\nca_file = \"/ca.pem\"\n", "upstream.ca_file"),
        ("[[profiles]]\nname = \"x\"\n", "profiles"),
        ("[server.tls]\ncert_file = \"/c\"\n", "key_file"),
        ("[auth]\nmode = \"static_keys\"\n", "auth.static_keys"),
    ];
    for (text, key) in cases {
        let err = match FileConfig::parse("t.toml", text) {
            Ok(file) => file.apply(&local).validate().unwrap_err().to_string(),
            Err(err) => err.to_string(),
        };
        assert!(err.contains(key), "{text:?} gave {err}");
    }
}
