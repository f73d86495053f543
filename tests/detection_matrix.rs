//! Detection coverage: every secret value of every rule's examples, written under a key name in
//! each of the assignment syntaxes developers paste (JSON, YAML, TOML, `.env`, shell, Python,
//! JS/TS, Go, Java, PHP, C#, Ruby, Kotlin, R, Makefile, XML, HCL, properties, a `.env` line inside
//! a JSON string, and prose), is masked whole; the same matrix over placeholder-like values
//! masks nothing.

mod support;

use std::collections::BTreeSet;
use streammask::{Action, RuleSet, Scope};
use support::*;

/// One assignment syntax: the text with `@@` standing for the value.
struct Syntax {
    name: &'static str,
    template: &'static str,
}

const SYNTAXES: &[Syntax] = &[
    Syntax {
        name: "json",
        template: r#"{"apiToken": "@@", "retries": 3}"#,
    },
    Syntax {
        name: "yaml",
        template: "service:\n  api_token: @@\n  retries: 3\n",
    },
    Syntax {
        name: "yaml-quoted",
        template: "api_token: '@@'\n",
    },
    Syntax {
        name: "toml",
        template: "[service]\napi_token = \"@@\"\n",
    },
    Syntax {
        name: "dotenv",
        template: "API_TOKEN=@@\nDEBUG=false\n",
    },
    Syntax {
        name: "shell-export",
        template: "export SERVICE_API_TOKEN='@@'\n",
    },
    Syntax {
        name: "docker-env",
        template: "docker run -e SERVICE_TOKEN=@@ app:latest",
    },
    Syntax {
        name: "python",
        template: "client = Client(base_url=BASE)\napi_token = \"@@\"\n",
    },
    Syntax {
        name: "python-env-default",
        template: "token = os.environ.get(\"API_TOKEN\", \"@@\")",
    },
    Syntax {
        name: "javascript",
        template: "const apiToken = \"@@\";\n",
    },
    Syntax {
        name: "typescript",
        template: "private readonly apiToken: string = '@@';",
    },
    Syntax {
        name: "go",
        template: "apiToken := \"@@\"\n",
    },
    Syntax {
        name: "java-property",
        template: "System.setProperty(\"SERVICE_TOKEN\", \"@@\");",
    },
    Syntax {
        name: "java-field",
        template: "private static final String API_TOKEN = \"@@\";",
    },
    Syntax {
        name: "php-append",
        template: "$serviceToken .= \"@@\";",
    },
    Syntax {
        name: "php-array",
        template: "'service_token' => '@@',",
    },
    Syntax {
        name: "csharp",
        template: "var token = GetEnvOrDefault(\"api_token\", \"@@\");",
    },
    Syntax {
        name: "ruby",
        template: "ENV.fetch(\"SERVICE_TOKEN\", \"@@\")",
    },
    Syntax {
        name: "kotlin",
        template: "val serviceToken = \"@@\"",
    },
    Syntax {
        name: "r",
        template: "api_token <- \"@@\"\n",
    },
    Syntax {
        name: "makefile",
        template: "SERVICE_TOKEN ?= @@\n",
    },
    Syntax {
        name: "xml",
        template: "<config><serviceToken>@@</serviceToken></config>",
    },
    Syntax {
        name: "hcl",
        template: "variable \"x\" {}\nresource \"svc\" \"a\" {\n  api_token = \"@@\"\n}\n",
    },
    Syntax {
        name: "properties",
        template: "service.api.token=@@\n",
    },
    Syntax {
        name: "json-string-dotenv",
        template: r#"{"config.ini": "SERVICE_TOKEN=@@\nBACKUP=true"}"#,
    },
    Syntax {
        name: "prose-colon",
        template: "here is my service api token: @@ thanks",
    },
    Syntax {
        name: "prose-dash",
        template: "service token - '@@'",
    },
];

/// Characters a value may not hold to be written unescaped in every syntax above.
fn writable_everywhere(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '`' | '<' | '>' | '$'))
}

/// Every secret the pack's own mask rules extract from their examples (single-line rules that
/// apply to requests), as found by that rule; with the number of values left out because they
/// cannot be written unescaped in every syntax.
fn example_values() -> (BTreeSet<String>, usize) {
    let set = RuleSet::embedded().expect("embedded pack");
    let engine = default_engine();
    let mut values = BTreeSet::new();
    let mut unwritable = 0;
    for rule in set.all() {
        if rule.action != Action::Mask
            || rule.multiline
            || !rule.applies_to.contains(&Scope::Request)
        {
            continue;
        }
        for example in &rule.examples {
            let found = engine.scan(example, Scope::Request).expect("scan");
            for finding in found.iter().filter(|f| f.rule_id == rule.id) {
                let value = &example[finding.span.clone()];
                if writable_everywhere(value) {
                    values.insert(value.to_string());
                } else {
                    unwritable += 1;
                }
            }
        }
    }
    (values, unwritable)
}

#[test]
fn every_example_value_is_masked_in_every_assignment_syntax() {
    let engine = default_engine();
    let (values, unwritable) = example_values();
    assert!(values.len() > 300, "only {} example values", values.len());
    assert!(SYNTAXES.len() >= 20);
    let mut missed = Vec::new();
    for value in &values {
        for syntax in SYNTAXES {
            let text = syntax.template.replace("@@", value);
            let masked = engine.mask(&text, Scope::Request).expect("mask");
            if masked.text.contains(value.as_str()) {
                missed.push(format!("{}: {text:?}", syntax.name));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} (value, syntax) pairs leave the value in place ({unwritable} values with quotes, \
         spaces or backslashes not tried):\n{}",
        missed.len(),
        values.len() * SYNTAXES.len(),
        missed.join("\n")
    );
}

/// Values that stand where a credential goes but are none: fillers, references, templates,
/// documentation placeholders and vendors' published example keys.
fn placeholder_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "xxxxxxxxxxxxxxxxxxxxxxxx",
        "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX",
        "************************",
        "changeme",
        "your-api-token",
        "your_api_token_here",
        "YOUR_API_TOKEN",
        "insert_token_here",
        "replace_me",
        "${API_TOKEN}",
        "{{API_TOKEN}}",
        "%API_TOKEN%",
        "process.env.API_TOKEN",
        "settings.API_TOKEN",
        "os.environ.API_TOKEN",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "2YotnFZFEjr1zCsicMWpAA",
        "redacted",
        "none",
        "null",
        "undefined",
        "true",
        "my-service-credentials-v2",
        "getServiceToken",
        "SERVICE_TOKEN_FROM_VAULT",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // Provider prefixes followed by filler: the shape of a token, the content of a placeholder.
    values.push(format!("ghp_{}", "x".repeat(36)));
    values.push(format!("glpat-{}", "X".repeat(20)));
    values.push(format!("sk-ant-api03-{}", "x".repeat(40)));
    values.push(format!("xoxb-{}", "x".repeat(30)));
    values
}

#[test]
fn placeholder_values_are_masked_in_no_assignment_syntax() {
    let engine = default_engine();
    let mut masked_pairs = Vec::new();
    for value in placeholder_values() {
        for syntax in SYNTAXES {
            let text = syntax.template.replace("@@", &value);
            let found = engine.scan(&text, Scope::Request).expect("scan");
            if let Some(finding) = found.iter().find(|f| f.action == Action::Mask) {
                masked_pairs.push(format!(
                    "{} ({}): {text:?} -> {:?}",
                    syntax.name,
                    finding.rule_id,
                    &text[finding.span.clone()]
                ));
            }
        }
    }
    assert!(
        masked_pairs.is_empty(),
        "placeholders masked:\n{}",
        masked_pairs.join("\n")
    );
}
