//! Deterministic "ordinary text" generator: code, prose, logs, lockfiles, UUIDs, git SHAs,
//! digests and base64 images — the text Claude Code sends all day that must pass unmasked.
//! Shared by the false-positive tests and the throughput benchmark (included by `#[path]`).

#![allow(dead_code)]

/// xorshift64*: tiny, dependency-free and identical on every machine, so a corpus is the same
/// bytes in every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| *self.pick(b"0123456789abcdef") as char)
            .collect()
    }

    fn base64(&mut self, len: usize) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..len).map(|_| *self.pick(B64) as char).collect()
    }

    fn uuid(&mut self) -> String {
        format!(
            "{}-{}-4{}-a{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }
}

const WORDS: &[&str] = &[
    "the",
    "request",
    "handler",
    "returns",
    "a",
    "stream",
    "of",
    "events",
    "when",
    "client",
    "asks",
    "for",
    "tokens",
    "secret",
    "management",
    "should",
    "never",
    "log",
    "password",
    "values",
    "configuration",
    "loads",
    "environment",
    "variables",
    "at",
    "startup",
    "and",
    "retries",
    "failed",
    "connections",
    "with",
    "exponential",
    "backoff",
    "database",
    "migration",
    "runs",
    "before",
    "deploy",
    "token",
    "bucket",
    "limits",
    "rate",
    "per",
    "user",
    "café",
    "naïve",
    "résumé",
    "日本語",
    "テキスト",
    "emoji",
    "🚀",
    "über",
    "key",
    "rotation",
    "policy",
];

const CODE: &[&str] = &[
    "import os\n\nDB_PASSWORD = os.environ['DB_PASSWORD']\napi_key = os.environ.get(\"API_KEY\")\n",
    "def connect():\n    password = get_password()\n    token = get_token()\n    return Client(token=token)\n",
    "const apiKey = process.env.API_KEY;\nconst secret = config.get('secret');\nexport default { apiKey };\n",
    "fn main() {\n    let token = std::env::var(\"TOKEN\").expect(\"TOKEN\");\n    let max_tokens: u32 = 1024;\n}\n",
    "password: ${DB_PASSWORD}\nsecret: \"{{ .Values.db.secret }}\"\ntoken: <redacted>\n",
    "func handler(w http.ResponseWriter, r *http.Request) {\n\ttoken := r.Header.Get(\"Authorization\")\n\tif token == \"\" {\n\t\treturn\n\t}\n}\n",
    "SELECT id, email, created_at FROM users WHERE id = $1 AND deleted_at IS NULL;\n",
    "for (let i = 0; i < items.length; i++) {\n  total += items[i].price * items[i].quantity;\n}\n",
    "class TokenBucket:\n    def __init__(self, rate: float, capacity: int) -> None:\n        self.rate = rate\n        self.capacity = capacity\n",
    "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())\ntoken_count = len(tokens)\n",
    "{\"model\": \"claude-sonnet-4-5\", \"max_tokens\": 1024, \"stream\": true, \"messages\": []}\n",
    "docker run -e DB_PASSWORD=\"$DB_PASSWORD\" -p 8080:8080 app:latest\n",
    "git log --oneline -n 20 && cargo test --release -- --nocapture\n",
];

/// One paragraph of the given kind.
fn piece(rng: &mut Rng, kind: usize) -> String {
    match kind {
        0 => {
            let n = 8 + rng.below(40);
            let mut s: Vec<&str> = (0..n).map(|_| *rng.pick(WORDS)).collect();
            s.push(".\n");
            s.join(" ")
        }
        1 => rng.pick(CODE).to_string(),
        2 => format!(
            "2026-11-27T22:{:02}:{:02}.{:03}Z INFO request_id={} method=POST path=/v1/messages status=200 duration_ms={} trace_id={}\n",
            rng.below(60),
            rng.below(60),
            rng.below(1000),
            rng.uuid(),
            rng.below(5000),
            rng.hex(32)
        ),
        3 => format!(
            "    \"node_modules/pkg-{}\": {{\n      \"version\": \"{}.{}.{}\",\n      \"resolved\": \"https://registry.npmjs.org/pkg-{}/-/pkg-{}-1.0.0.tgz\",\n      \"integrity\": \"sha512-{}==\"\n    }},\n",
            rng.below(10000),
            rng.below(20),
            rng.below(50),
            rng.below(100),
            rng.below(100),
            rng.below(100),
            rng.base64(86)
        ),
        4 => format!("commit {}\nAuthor: Dev <dev@example.com>\n\n    fix: handle empty stream\n", rng.hex(40)),
        5 => format!("image: registry.example.com/app@sha256:{}\nid: {}\n", rng.hex(64), rng.uuid()),
        6 => {
            let len = 1024 + rng.below(4096);
            format!("![screenshot](data:image/png;base64,iVBORw0KGgo{}=)\n", rng.base64(len))
        }
        _ => format!(
            "{{\"id\": \"{}\", \"sha\": \"{}\", \"count\": {}, \"ok\": true}}\n",
            rng.uuid(),
            rng.hex(40),
            rng.below(100000)
        ),
    }
}

/// About `size` bytes of mixed ordinary text, the same for the same seed.
pub fn ordinary_text(seed: u64, size: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::with_capacity(size + 8192);
    while text.len() < size {
        // Weighted toward prose and code, like a real conversation.
        let kind = *rng.pick(&[0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7]);
        text.push_str(&piece(&mut rng, kind));
    }
    text
}

/// `count` distinct made-up names (customer-name shaped, one in ten followed by ` Group`):
/// the terms of a generated organisation dictionary.
pub fn made_up_names(count: usize, seed: u64) -> Vec<String> {
    const SYLLABLES: [&str; 20] = [
        "ka", "zo", "ri", "ven", "tal", "mu", "qui", "dor", "xan", "pe", "lo", "brim", "sa", "tor",
        "vel", "ny", "gra", "fen", "os", "ul",
    ];
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut names = Vec::with_capacity(count);
    while names.len() < count {
        let mut word = String::new();
        for _ in 0..3 + rng.below(3) {
            word.push_str(SYLLABLES[rng.below(SYLLABLES.len())]);
        }
        let mut name = word[..1].to_uppercase() + &word[1..];
        if rng.below(10) == 0 {
            name.push_str(" Group");
        }
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    names
}
