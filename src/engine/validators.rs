//! Validators: checks that confirm a personal-data candidate once a rule's regex has found it.
//!
//! A rule with `validate = "<name>"` hands the candidate (its `secret` group, exactly as written
//! in the text) to [`Validator::validate`]; `false` means the candidate is not a finding. Regexes
//! find the shape of a card number, an IBAN or a phone number; only a check digit, an issuer
//! table or a numbering plan tells a real value from an order id or a version string.
//!
//! Invariants:
//! - a validator is a pure function of the value and the [`ValidationContext`]: no clock, no
//!   I/O, no state kept between calls, so the same candidate gets the same answer in a request,
//!   in its streamed response and on every replica;
//! - it never panics, whatever the bytes (invalid UTF-8, control bytes, huge inputs): a value
//!   outside the alphabet of its kind is refused before any parsing, and the phone library is
//!   only ever given `+` and ASCII digits;
//! - it allocates at most O(value): every value is bounded by the longest real value of its kind
//!   before any work, and the checks here use fixed-size stack buffers (the phone library's own
//!   allocations are proportional to the at most 16 bytes it is given);
//! - no value, nor any part of one, is ever logged or put in an error: a validator answers with
//!   a `bool` only.

use serde::Deserialize;
use std::str::FromStr;

/// A check a rule's candidate must pass, named in rule files by its kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validator {
    /// A payment card number: Luhn check digit, an issuer prefix with a length it issues.
    PaymentCard,
    /// An IBAN: registered country with its length, ISO 7064 mod-97 check digits.
    Iban,
    /// A US Social Security number in `ddd-dd-dddd` form with assignable area, group, serial.
    UsSsn,
    /// An e-mail address outside reserved, allow-listed and file-name look-alike domains.
    Email,
    /// An international phone number (`+44 20 7946 0958`) valid in its numbering plan.
    Phone,
    /// A national-format phone number (`020 7946 0958`) valid in the profile's region.
    PhoneNational,
}

/// What a validator may depend on besides the value (set per policy profile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationContext {
    /// ISO 3166-1 alpha-2 region (e.g. "GB") for national-format phone numbers; None:
    /// national-format numbers are never findings.
    pub phone_region: Option<String>,
    /// E-mail domains never treated as personal data (the domain itself or any subdomain), on
    /// top of the reserved ones. Compared ignoring ASCII case and leading or trailing dots.
    pub email_allow_domains: Vec<String>,
}

impl Validator {
    pub const ALL: [Validator; 6] = [
        Validator::PaymentCard,
        Validator::Iban,
        Validator::UsSsn,
        Validator::Email,
        Validator::Phone,
        Validator::PhoneNational,
    ];

    /// The name rule files use for this validator.
    pub fn as_str(self) -> &'static str {
        match self {
            Validator::PaymentCard => "payment-card",
            Validator::Iban => "iban",
            Validator::UsSsn => "us-ssn",
            Validator::Email => "email",
            Validator::Phone => "phone",
            Validator::PhoneNational => "phone-national",
        }
    }

    /// Whether `value` (the candidate's bytes, any bytes, possibly invalid UTF-8) is a real value of this kind.
    pub fn validate(self, value: &[u8], context: &ValidationContext) -> bool {
        match self {
            Validator::PaymentCard => payment_card_valid(value),
            Validator::Iban => iban_written_valid(value),
            Validator::UsSsn => us_ssn_valid(value),
            Validator::Email => email_valid(value, &context.email_allow_domains),
            Validator::Phone => phone_international_valid(value),
            Validator::PhoneNational => context
                .phone_region
                .as_deref()
                .and_then(phone_region_id)
                .is_some_and(|region| phone_national_valid(value, region)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payment cards
// ---------------------------------------------------------------------------------------------

/// The fewest and most digits of a card number we take (ISO/IEC 7812 allows 8-19, but numbers
/// under 13 digits are Maestro-only and collide with too many other ids).
const CARD_MIN_DIGITS: usize = 13;
const CARD_MAX_DIGITS: usize = 19;

/// Card numbers printed in every payment SDK's documentation and test suites: they pass every
/// check, but a prompt holding one holds no personal data.
pub const PUBLISHED_TEST_CARDS: [&str; 12] = [
    "4111111111111111",
    "4242424242424242",
    "4012888888881881",
    "5555555555554444",
    "5105105105105100",
    "378282246310005",
    "371449635398431",
    "6011111111111117",
    "3530111333300000",
    "30569309025904",
    "4000056655665556",
    "5200828282828210",
];

/// One issuer prefix range: the first `digits` digits of the number lie in `low..=high`, and
/// the number's length is one of the set bits of `lengths`.
struct IssuerRange {
    issuer: &'static str,
    digits: usize,
    low: u32,
    high: u32,
    lengths: u32,
}

/// A bit set of card lengths `low..=high`.
const fn lengths(low: u32, high: u32) -> u32 {
    let mut set = 0;
    let mut n = low;
    while n <= high {
        set |= 1 << n;
        n += 1;
    }
    set
}

const fn range(issuer: &'static str, digits: usize, low: u32, high: u32, lens: u32) -> IssuerRange {
    IssuerRange {
        issuer,
        digits,
        low,
        high,
        lengths: lens,
    }
}

/// Issuer prefixes (IIN ranges) with the lengths each issues. Order matters only where ranges
/// overlap: Discover's 622126-622925 sits inside UnionPay's 62 and is named Discover.
const ISSUERS: [IssuerRange; 19] = [
    range("amex", 2, 34, 34, lengths(15, 15)),
    range("amex", 2, 37, 37, lengths(15, 15)),
    range("diners-club", 3, 300, 305, lengths(14, 19)),
    range("diners-club", 2, 36, 36, lengths(14, 19)),
    range("diners-club", 2, 38, 39, lengths(14, 19)),
    range("jcb", 4, 3528, 3589, lengths(16, 19)),
    range("visa", 1, 4, 4, (1 << 13) | (1 << 16) | (1 << 19)),
    range("mastercard", 2, 51, 55, lengths(16, 16)),
    range("mastercard", 4, 2221, 2720, lengths(16, 16)),
    range("discover", 4, 6011, 6011, lengths(16, 19)),
    range("discover", 3, 644, 649, lengths(16, 19)),
    range("discover", 2, 65, 65, lengths(16, 19)),
    range("discover", 6, 622126, 622925, lengths(16, 19)),
    range("unionpay", 2, 62, 62, lengths(16, 19)),
    // Maestro also issues 12-digit numbers; like every number under 13 digits they are left out.
    range("maestro", 2, 50, 50, lengths(13, 19)),
    range("maestro", 2, 56, 58, lengths(13, 19)),
    range("maestro", 4, 6304, 6304, lengths(13, 19)),
    range("maestro", 4, 6759, 6759, lengths(13, 19)),
    range("maestro", 4, 6761, 6763, lengths(13, 19)),
];

/// Whether `digits` (ASCII digits only) ends in a correct Luhn check digit. Anything else
/// (empty, a non-digit byte) is `false`.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The issuer whose prefix `digits` starts with and who issues cards of its length
/// (`"visa"`, `"mastercard"`, `"amex"`, `"discover"`, `"jcb"`, `"diners-club"`, `"unionpay"`,
/// `"maestro"`), or `None`. Does not look at the check digit.
pub fn card_issuer(digits: &[u8]) -> Option<&'static str> {
    if !(CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&digits.len())
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    ISSUERS.iter().find_map(|range| {
        let prefix = digits[..range.digits]
            .iter()
            .fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'));
        let length_ok = range.lengths & (1 << digits.len()) != 0;
        ((range.low..=range.high).contains(&prefix) && length_ok).then_some(range.issuer)
    })
}

/// Whether `digits` is one of [`PUBLISHED_TEST_CARDS`].
pub fn is_published_test_card(digits: &[u8]) -> bool {
    PUBLISHED_TEST_CARDS
        .iter()
        .any(|card| card.as_bytes() == digits)
}

/// The most groups a written card number has (4-4-4-4-3).
const CARD_MAX_GROUPS: usize = 5;

/// Whether digit groups of these lengths are how card numbers are written: 4-4-4-4 with the
/// last group 1-4 digits (13-16 digits), 4-4-4-4-1..3 (17-19), and Amex's and Diners' 4-6-5 and
/// 4-6-4. Other groupings of 13-19 digits are phone numbers, ids or amounts.
fn card_grouping_ok(groups: &[usize]) -> bool {
    match groups {
        [4, 4, 4, last] => (1..=4).contains(last),
        [4, 4, 4, 4, last] => (1..=3).contains(last),
        [4, 6, last] => (4..=5).contains(last),
        _ => false,
    }
}

/// Copies the digits of a card number into `out` and returns how many there are, when the
/// number is compact or in one of the usual groupings with one kind of separator (single
/// spaces or single dashes); `None` for any other shape.
fn card_digits(value: &[u8], out: &mut [u8; CARD_MAX_DIGITS]) -> Option<usize> {
    if value.len() > CARD_MAX_DIGITS + CARD_MAX_GROUPS - 1 {
        return None;
    }
    // Whatever first breaks the digits must separate every group: mixing spaces and dashes
    // means the regex joined two numbers.
    let separator = value.iter().copied().find(|b| !b.is_ascii_digit());
    let mut groups = [0usize; CARD_MAX_GROUPS];
    let mut group_count = 0;
    let mut count = 0;
    for group in value.split(|&b| Some(b) == separator) {
        if !group.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *groups.get_mut(group_count)? = group.len();
        group_count += 1;
        out.get_mut(count..count + group.len())?
            .copy_from_slice(group);
        count += group.len();
    }
    let shape_ok = match separator {
        None => true,
        Some(b' ' | b'-') => card_grouping_ok(&groups[..group_count]),
        Some(_) => false,
    };
    shape_ok.then_some(count)
}

fn payment_card_valid(value: &[u8]) -> bool {
    let mut buffer = [0u8; CARD_MAX_DIGITS];
    let Some(count) = card_digits(value, &mut buffer) else {
        return false;
    };
    let digits = &buffer[..count];
    count >= CARD_MIN_DIGITS
        && luhn_valid(digits)
        && card_issuer(digits).is_some()
        && !is_published_test_card(digits)
}

// ---------------------------------------------------------------------------------------------
// IBAN
// ---------------------------------------------------------------------------------------------

/// The longest IBAN ISO 13616 allows.
const IBAN_MAX_LEN: usize = 34;

/// IBAN lengths per country, from the SWIFT IBAN registry (ISO 13616), including the
/// countries registered since 2021 (BI, DJ, FK, HN, MN, NI, OM, RU, SD, SO, YE). Sorted by
/// country code for binary search.
const IBAN_LENGTHS: [([u8; 2], u8); 89] = [
    (*b"AD", 24),
    (*b"AE", 23),
    (*b"AL", 28),
    (*b"AT", 20),
    (*b"AZ", 28),
    (*b"BA", 20),
    (*b"BE", 16),
    (*b"BG", 22),
    (*b"BH", 22),
    (*b"BI", 27),
    (*b"BR", 29),
    (*b"BY", 28),
    (*b"CH", 21),
    (*b"CR", 22),
    (*b"CY", 28),
    (*b"CZ", 24),
    (*b"DE", 22),
    (*b"DJ", 27),
    (*b"DK", 18),
    (*b"DO", 28),
    (*b"EE", 20),
    (*b"EG", 29),
    (*b"ES", 24),
    (*b"FI", 18),
    (*b"FK", 18),
    (*b"FO", 18),
    (*b"FR", 27),
    (*b"GB", 22),
    (*b"GE", 22),
    (*b"GI", 23),
    (*b"GL", 18),
    (*b"GR", 27),
    (*b"GT", 28),
    (*b"HN", 28),
    (*b"HR", 21),
    (*b"HU", 28),
    (*b"IE", 22),
    (*b"IL", 23),
    (*b"IQ", 23),
    (*b"IS", 26),
    (*b"IT", 27),
    (*b"JO", 30),
    (*b"KW", 30),
    (*b"KZ", 20),
    (*b"LB", 28),
    (*b"LC", 32),
    (*b"LI", 21),
    (*b"LT", 20),
    (*b"LU", 20),
    (*b"LV", 21),
    (*b"LY", 25),
    (*b"MC", 27),
    (*b"MD", 24),
    (*b"ME", 22),
    (*b"MK", 19),
    (*b"MN", 20),
    (*b"MR", 27),
    (*b"MT", 31),
    (*b"MU", 30),
    (*b"NI", 28),
    (*b"NL", 18),
    (*b"NO", 15),
    (*b"OM", 23),
    (*b"PK", 24),
    (*b"PL", 28),
    (*b"PS", 29),
    (*b"PT", 25),
    (*b"QA", 29),
    (*b"RO", 24),
    (*b"RS", 22),
    (*b"RU", 33),
    (*b"SA", 24),
    (*b"SC", 31),
    (*b"SD", 18),
    (*b"SE", 24),
    (*b"SI", 19),
    (*b"SK", 24),
    (*b"SM", 27),
    (*b"SO", 23),
    (*b"ST", 25),
    (*b"SV", 28),
    (*b"TL", 23),
    (*b"TN", 24),
    (*b"TR", 26),
    (*b"UA", 29),
    (*b"VA", 22),
    (*b"VG", 24),
    (*b"XK", 20),
    (*b"YE", 30),
];

/// The IBAN length registered for `country` (two upper-case letters), or `None` for a country
/// without IBANs.
pub fn iban_length(country: &[u8]) -> Option<usize> {
    IBAN_LENGTHS
        .binary_search_by(|(code, _)| code.as_slice().cmp(country))
        .ok()
        .map(|index| usize::from(IBAN_LENGTHS[index].1))
}

/// Whether `compact` (no spaces) is a valid IBAN: registered country, that country's length,
/// upper-case letters and digits only, check digits neither 00, 01 nor 99, ISO 7064 mod-97 = 1.
pub fn iban_valid(compact: &[u8]) -> bool {
    if compact.len() < 5 || compact.len() > IBAN_MAX_LEN {
        return false;
    }
    let (country, check, bban) = (&compact[..2], &compact[2..4], &compact[4..]);
    let shape_ok = country.iter().all(u8::is_ascii_uppercase)
        && check.iter().all(u8::is_ascii_digit)
        && bban
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    // 00, 01 and 99 can never come out of the check-digit computation (98 - n mod 97 is 2..=98).
    shape_ok
        && !matches!(check, b"00" | b"01" | b"99")
        && iban_length(country) == Some(compact.len())
        && iban_mod97(bban.iter().chain(country).chain(check)) == 1
}

/// ISO 7064 mod 97-10 of the characters in order, letters counting as 10..=35, computed one
/// character at a time so no big integer is needed.
fn iban_mod97<'a>(chars: impl Iterator<Item = &'a u8>) -> u32 {
    chars.fold(0u32, |remainder, &b| {
        if b.is_ascii_digit() {
            (remainder * 10 + u32::from(b - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(b - b'A') + 10) % 97
        }
    })
}

/// An IBAN as written: compact, or in groups of four separated by single spaces (the last
/// group may be shorter), which is how banks print them.
fn iban_written_valid(value: &[u8]) -> bool {
    // 34 characters in groups of four: at most 8 spaces.
    if value.len() > IBAN_MAX_LEN + 8 {
        return false;
    }
    let mut compact = [0u8; IBAN_MAX_LEN];
    let mut len = 0;
    let groups = value.split(|&b| b == b' ');
    let group_count = value.split(|&b| b == b' ').count();
    for (index, group) in groups.enumerate() {
        let last = index + 1 == group_count;
        let group_ok = if group_count == 1 {
            !group.is_empty()
        } else if last {
            (1..=4).contains(&group.len())
        } else {
            group.len() == 4
        };
        if !group_ok || len + group.len() > IBAN_MAX_LEN {
            return false;
        }
        compact[len..len + group.len()].copy_from_slice(group);
        len += group.len();
    }
    iban_valid(&compact[..len])
}

// ---------------------------------------------------------------------------------------------
// US Social Security numbers
// ---------------------------------------------------------------------------------------------

/// Numbers printed on sample cards and in textbooks (078-05-1120 on a wallet insert in 1938,
/// 219-09-9999 in an SSA pamphlet) or typed as placeholders: not anyone's number.
const WELL_KNOWN_SSNS: [&[u8; 11]; 3] = [b"078-05-1120", b"219-09-9999", b"123-45-6789"];

fn us_ssn_valid(value: &[u8]) -> bool {
    let Ok(value) = <&[u8; 11]>::try_from(value) else {
        return false;
    };
    let shape_ok = value.iter().enumerate().all(|(i, b)| match i {
        3 | 6 => *b == b'-',
        _ => b.is_ascii_digit(),
    });
    if !shape_ok {
        return false;
    }
    let (area, group, serial) = (&value[0..3], &value[4..6], &value[7..11]);
    // The SSA never assigns area 000, 666 or 900-999 (the 9xx range is ITINs), group 00 or
    // serial 0000.
    area != b"000"
        && area != b"666"
        && area[0] != b'9'
        && group != b"00"
        && serial != b"0000"
        && !WELL_KNOWN_SSNS.contains(&value)
}

// ---------------------------------------------------------------------------------------------
// E-mail addresses
// ---------------------------------------------------------------------------------------------

const EMAIL_LOCAL_MAX: usize = 64;
const EMAIL_DOMAIN_MAX: usize = 253;
const DNS_LABEL_MAX: usize = 63;
const TLD_MAX: usize = 24;

/// The allow-list an organisation gets unless it writes its own: GitHub's commit-author
/// addresses (`12345678+octocat@users.noreply.github.com`) stand for an account, not a mailbox,
/// and fill every `git log`.
pub const DEFAULT_EMAIL_ALLOW_DOMAINS: &[&str] = &["users.noreply.github.com"];

/// Domains RFC 2606 reserves for documentation: addresses there belong to no one.
const RESERVED_DOMAINS: [&str; 3] = ["example.com", "example.net", "example.org"];

/// Top-level domains RFC 2606 / RFC 6761 reserve: never delegated, so never a mailbox.
const RESERVED_TLDS: [&str; 4] = ["example", "test", "invalid", "localhost"];

/// File extensions that look like top-level domains after an `@`: `icon@2x.png`,
/// `lodash@4.17.21.tgz`, `chunk@abc.js` are files, not addresses.
const FILE_EXTENSION_TLDS: [&str; 38] = [
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "css", "scss", "js", "mjs", "cjs",
    "ts", "tsx", "jsx", "json", "map", "html", "htm", "lock", "zip", "gz", "tgz", "pdf", "woff",
    "woff2", "ttf", "eot", "mp4", "mp3", "wasm", "otf", "txt", "xml", "yml", "yaml", "toml",
];

fn email_valid(value: &[u8], allow_domains: &[String]) -> bool {
    // A sentence ending right after an address puts its full stop into the candidate.
    let value = value.strip_suffix(b".").unwrap_or(value);
    if value.len() > EMAIL_LOCAL_MAX + 1 + EMAIL_DOMAIN_MAX {
        return false;
    }
    let Some(at) = value.iter().position(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&value[..at], &value[at + 1..]);
    let Some(tld) = domain_tld(domain) else {
        return false;
    };
    email_local_valid(local)
        && !RESERVED_DOMAINS
            .iter()
            .any(|reserved| within_domain(domain, reserved.as_bytes()))
        && !RESERVED_TLDS
            .iter()
            .any(|reserved| tld.eq_ignore_ascii_case(reserved.as_bytes()))
        && !FILE_EXTENSION_TLDS
            .iter()
            .any(|extension| tld.eq_ignore_ascii_case(extension.as_bytes()))
        && !allow_domains
            .iter()
            .any(|allowed| within_domain(domain, allowed.trim_matches('.').as_bytes()))
}

/// The dot-atom local part of RFC 5322 (no quoted strings: those never occur in prose).
fn email_local_valid(local: &[u8]) -> bool {
    const SPECIALS: &[u8] = b".!#$%&'*+/=?^_`{|}~-";
    (1..=EMAIL_LOCAL_MAX).contains(&local.len())
        && local
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || SPECIALS.contains(b))
        && local.first() != Some(&b'.')
        && local.last() != Some(&b'.')
        && !local.windows(2).any(|pair| pair == b"..")
}

/// The top-level label of `domain` if it is a host name of at least two labels whose top-level
/// label is 2-24 letters (numeric "TLDs" are version numbers: `name@1.2.3`); `None` otherwise.
fn domain_tld(domain: &[u8]) -> Option<&[u8]> {
    if domain.is_empty() || domain.len() > EMAIL_DOMAIN_MAX {
        return None;
    }
    let mut labels = 0;
    let mut tld: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        let label_ok = (1..=DNS_LABEL_MAX).contains(&label.len())
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-');
        if !label_ok {
            return None;
        }
        labels += 1;
        tld = label;
    }
    let tld_ok = labels >= 2
        && (2..=TLD_MAX).contains(&tld.len())
        && tld.iter().all(u8::is_ascii_alphabetic);
    tld_ok.then_some(tld)
}

/// Whether `domain` is `base` or a subdomain of it, ignoring ASCII case. An empty `base`
/// contains nothing.
fn within_domain(domain: &[u8], base: &[u8]) -> bool {
    if base.is_empty() || domain.len() < base.len() {
        return false;
    }
    let split = domain.len() - base.len();
    domain[split..].eq_ignore_ascii_case(base) && (split == 0 || domain[split - 1] == b'.')
}

// ---------------------------------------------------------------------------------------------
// Phone numbers
// ---------------------------------------------------------------------------------------------

/// E.164: at most 15 digits, country code included.
const PHONE_MAX_DIGITS: usize = 15;
/// Fewer digits than this after a `+` is a short code or a fragment, not a subscriber.
const PHONE_INTERNATIONAL_MIN_DIGITS: usize = 8;
/// The shortest national numbers in use (some regions' 7-digit local numbers).
const PHONE_NATIONAL_MIN_DIGITS: usize = 7;
/// The most digits an area code in parentheses has (UK `(01632)`).
const PHONE_AREA_MAX_DIGITS: usize = 5;
/// The longest written number we look at: 15 digits, a `+`, a separator between each pair of
/// digits and a pair of parentheses.
const PHONE_MAX_LEN: usize = 1 + 2 * PHONE_MAX_DIGITS + 2;

/// Loads the phone library's numbering plans now (about 0.1 s), rather than in the first
/// request that holds a phone candidate. Optional: validation loads them on first use.
pub fn load_phone_metadata() {
    let _ = phonenumber::metadata::DATABASE.by_id("GB");
}

/// Whether `region` names a region the phone library knows (for config validation): an
/// upper-case ISO 3166-1 alpha-2 code the library has numbering-plan metadata for.
pub fn is_phone_region(region: &str) -> bool {
    phone_region_id(region).is_some()
}

/// The library's id for `region`, only if it also has metadata for it: parsing with a default
/// region the library has no metadata for would make it panic.
fn phone_region_id(region: &str) -> Option<phonenumber::country::Id> {
    let id = phonenumber::country::Id::from_str(region).ok()?;
    phonenumber::metadata::DATABASE
        .by_id(region)
        .is_some()
        .then_some(id)
}

/// The digits of a phone number written with single spaces, dashes or dots between digit
/// groups and at most one pair of parentheses around 1-5 digits (an area code, or the UK-style
/// `(0)`), copied into `out`, with their count; `None` for anything else, letters included.
fn phone_digits(written: &[u8], out: &mut [u8; PHONE_MAX_DIGITS]) -> Option<usize> {
    enum Previous {
        Start,
        Digit,
        Separator,
        Open,
        Close,
    }
    if written.len() > PHONE_MAX_LEN || !written.last()?.is_ascii_digit() {
        return None;
    }
    let mut previous = Previous::Start;
    let mut count = 0;
    let mut parentheses_seen = false;
    let mut digits_in_parentheses: Option<usize> = None;
    for &b in written {
        previous = match b {
            b'0'..=b'9' => {
                *out.get_mut(count)? = b;
                count += 1;
                if let Some(inside) = digits_in_parentheses.as_mut() {
                    *inside += 1;
                }
                Previous::Digit
            }
            // Separators only between groups, never inside the parentheses.
            b' ' | b'-' | b'.'
                if matches!(previous, Previous::Digit | Previous::Close)
                    && digits_in_parentheses.is_none() =>
            {
                Previous::Separator
            }
            b'(' if !parentheses_seen => {
                parentheses_seen = true;
                digits_in_parentheses = Some(0);
                Previous::Open
            }
            b')' if digits_in_parentheses
                .is_some_and(|inside| (1..=PHONE_AREA_MAX_DIGITS).contains(&inside)) =>
            {
                digits_in_parentheses = None;
                Previous::Close
            }
            _ => return None,
        };
    }
    // Still inside parentheses at the end: a `(` without its `)`.
    digits_in_parentheses.is_none().then_some(count)
}

/// Runs the phone library on `+digits` or `digits`, turning a panic inside it into `false`:
/// the shapes checked before calling make one unlikely, but the library is third-party code
/// in the request path, and a refused candidate is better than a dead worker.
fn library_valid(region: Option<phonenumber::country::Id>, normalized: &str) -> bool {
    std::panic::catch_unwind(|| {
        phonenumber::parse(region, normalized)
            .map(|number| phonenumber::is_valid(&number))
            .unwrap_or(false)
    })
    .unwrap_or(false)
}

fn phone_international_valid(value: &[u8]) -> bool {
    let Some((b'+', rest)) = value.split_first() else {
        return false;
    };
    // The country code comes right after the `+`.
    if !rest.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    let mut normalized = [b'+'; 1 + PHONE_MAX_DIGITS];
    let mut digits = [0u8; PHONE_MAX_DIGITS];
    let Some(count) = phone_digits(rest, &mut digits) else {
        return false;
    };
    if !(PHONE_INTERNATIONAL_MIN_DIGITS..=PHONE_MAX_DIGITS).contains(&count) {
        return false;
    }
    normalized[1..=count].copy_from_slice(&digits[..count]);
    std::str::from_utf8(&normalized[..=count])
        .is_ok_and(|normalized| library_valid(None, normalized))
}

fn phone_national_valid(value: &[u8], region: phonenumber::country::Id) -> bool {
    let mut digits = [0u8; PHONE_MAX_DIGITS];
    let Some(count) = phone_digits(value, &mut digits) else {
        return false;
    };
    (PHONE_NATIONAL_MIN_DIGITS..=PHONE_MAX_DIGITS).contains(&count)
        && std::str::from_utf8(&digits[..count])
            .is_ok_and(|normalized| library_valid(Some(region), normalized))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> ValidationContext {
        ValidationContext::default()
    }

    fn valid(validator: Validator, value: &str) -> bool {
        validator.validate(value.as_bytes(), &none())
    }

    fn region(code: &str) -> ValidationContext {
        ValidationContext {
            phone_region: Some(code.to_string()),
            ..ValidationContext::default()
        }
    }

    fn allowing(domains: &[&str]) -> ValidationContext {
        ValidationContext {
            email_allow_domains: domains.iter().map(|d| d.to_string()).collect(),
            ..ValidationContext::default()
        }
    }

    /// `body` followed by its Luhn check digit, computed independently of `luhn_valid`: the
    /// check digit is whatever makes the weighted sum a multiple of ten.
    fn with_luhn_digit(body: &str) -> String {
        let weighted: u32 = body
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let d = u32::from(b - b'0');
                // The check digit will sit at position 0, so the body's rightmost digit doubles.
                if i % 2 == 0 {
                    (d * 2) / 10 + (d * 2) % 10
                } else {
                    d
                }
            })
            .sum();
        format!("{body}{}", (10 - weighted % 10) % 10)
    }

    /// `card` with its last digit changed by one (mod 10): every single-digit change breaks Luhn.
    fn off_by_one(card: &str) -> String {
        let (body, last) = card.split_at(card.len() - 1);
        let digit = (last.as_bytes()[0] - b'0' + 1) % 10;
        format!("{body}{digit}")
    }

    /// An IBAN for `country` and `bban` with correct check digits, computed the textbook way
    /// (letters expanded to two-digit numbers, the digit string reduced nine digits at a time)
    /// rather than character by character as `iban_valid` does.
    fn iban_with_check(country: &str, bban: &str) -> String {
        let rearranged = format!("{bban}{country}00");
        let expanded: String = rearranged
            .chars()
            .map(|c| match c.to_digit(36) {
                Some(v) => v.to_string(),
                None => panic!("not alphanumeric: {c}"),
            })
            .collect();
        let mut remainder: u64 = 0;
        for chunk in expanded.as_bytes().chunks(7) {
            let piece = format!("{remainder}{}", std::str::from_utf8(chunk).unwrap());
            remainder = piece.parse::<u64>().unwrap() % 97;
        }
        format!("{country}{:02}{bban}", 98 - remainder)
    }

    fn grouped(compact: &str) -> String {
        compact
            .as_bytes()
            .chunks(4)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }

    // --- names -----------------------------------------------------------------------------

    #[test]
    fn every_validator_deserializes_from_its_kebab_case_name() {
        #[derive(Deserialize)]
        struct Rule {
            validate: Validator,
        }
        for validator in Validator::ALL {
            let rule: Rule = toml::from_str(&format!("validate = \"{}\"", validator.as_str()))
                .expect("the name as_str gives parses back");
            assert_eq!(rule.validate, validator);
        }
        assert!(toml::from_str::<Rule>("validate = \"PaymentCard\"").is_err());
        assert!(toml::from_str::<Rule>("validate = \"luhn\"").is_err());
    }

    #[test]
    fn all_lists_each_validator_once() {
        let names: std::collections::HashSet<_> =
            Validator::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(names.len(), Validator::ALL.len());
    }

    // --- payment cards ---------------------------------------------------------------------

    #[test]
    fn luhn_accepts_generated_check_digits_and_rejects_every_other_last_digit() {
        for body in ["7992739871", "453201511283036", "000000000000000", "1"] {
            let good = with_luhn_digit(body);
            assert!(luhn_valid(good.as_bytes()), "{good}");
            let mut wrong = good.clone();
            for _ in 0..9 {
                wrong = off_by_one(&wrong);
                assert!(!luhn_valid(wrong.as_bytes()), "{wrong}");
            }
        }
        // The textbook example.
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
    }

    #[test]
    fn luhn_rejects_empty_and_non_digit_input() {
        assert!(!luhn_valid(b""));
        assert!(!luhn_valid(b"0000 0000"));
        assert!(!luhn_valid(b"a0"));
    }

    #[test]
    fn luhn_valid_numbers_of_each_issuer_and_length_are_cards() {
        let cases: [(&str, usize, &str); 17] = [
            ("4", 13, "visa"),
            ("4", 16, "visa"),
            ("4", 19, "visa"),
            ("51", 16, "mastercard"),
            ("55", 16, "mastercard"),
            ("2221", 16, "mastercard"),
            ("2720", 16, "mastercard"),
            ("34", 15, "amex"),
            ("37", 15, "amex"),
            ("6011", 16, "discover"),
            ("622126", 19, "discover"),
            ("3528", 16, "jcb"),
            ("3589", 19, "jcb"),
            ("305", 14, "diners-club"),
            ("36", 14, "diners-club"),
            ("62", 17, "unionpay"),
            ("6759", 13, "maestro"),
        ];
        for (prefix, length, issuer) in cases {
            let body = format!("{prefix}{}", "7".repeat(length - prefix.len() - 1));
            let card = with_luhn_digit(&body);
            assert_eq!(card.len(), length);
            assert_eq!(card_issuer(card.as_bytes()), Some(issuer), "{card}");
            assert!(valid(Validator::PaymentCard, &card), "{card}");
            assert!(!valid(Validator::PaymentCard, &off_by_one(&card)), "{card}");
        }
    }

    #[test]
    fn card_with_check_digit_off_by_one_is_not_a_card() {
        let card = with_luhn_digit("453201511283036");
        assert!(valid(Validator::PaymentCard, &card));
        assert!(!valid(Validator::PaymentCard, &off_by_one(&card)));
    }

    #[test]
    fn luhn_valid_numbers_without_a_card_prefix_are_not_cards() {
        // 1, 7, 8, 9 and 0 start no card brand; 2220 and 2721 sit just outside Mastercard's
        // 2-series; 6012 is neither Discover nor Maestro.
        for prefix in ["1", "7", "8", "9", "0", "2220", "2721", "6012", "33", "31"] {
            let card = with_luhn_digit(&format!("{prefix}{}", "3".repeat(15 - prefix.len())));
            assert!(luhn_valid(card.as_bytes()));
            assert_eq!(card_issuer(card.as_bytes()), None, "{card}");
            assert!(!valid(Validator::PaymentCard, &card), "{card}");
        }
    }

    #[test]
    fn card_lengths_an_issuer_does_not_use_are_not_cards() {
        // Visa: 13, 16, 19 only. Amex: 15 only. Mastercard: 16 only.
        for (prefix, length) in [
            ("4", 14),
            ("4", 15),
            ("4", 17),
            ("4", 18),
            ("37", 16),
            ("34", 14),
            ("51", 15),
            ("51", 17),
            ("2221", 19),
            ("6011", 15),
        ] {
            let card = with_luhn_digit(&format!(
                "{prefix}{}",
                "5".repeat(length - prefix.len() - 1)
            ));
            assert!(luhn_valid(card.as_bytes()));
            assert!(!valid(Validator::PaymentCard, &card), "{card}");
        }
    }

    #[test]
    fn card_numbers_outside_13_to_19_digits_are_not_cards() {
        let short = with_luhn_digit("50000000012"); // Maestro prefix, 12 digits.
        assert_eq!(short.len(), 12);
        assert!(luhn_valid(short.as_bytes()));
        assert!(!valid(Validator::PaymentCard, &short));
        let long = with_luhn_digit(&format!("6{}", "2".repeat(18))); // 20 digits.
        assert!(luhn_valid(long.as_bytes()));
        assert!(!valid(Validator::PaymentCard, &long));
    }

    /// `digits` split into groups of the given sizes, joined by `separator`.
    fn group(digits: &str, sizes: &[usize], separator: &str) -> String {
        let mut rest = digits;
        let mut groups = Vec::new();
        for &size in sizes {
            let (head, tail) = rest.split_at(size);
            groups.push(head);
            rest = tail;
        }
        assert!(rest.is_empty(), "sizes must cover {digits}");
        groups.join(separator)
    }

    #[test]
    fn card_numbers_in_the_usual_groupings_with_spaces_or_dashes_are_cards() {
        let visa16 = with_luhn_digit("453201511283036");
        let visa13 = with_luhn_digit("422638406608");
        let visa19 = with_luhn_digit("446449217070478147");
        let amex = with_luhn_digit("34123456789012");
        let diners = with_luhn_digit("3669544470608");
        for (card, sizes) in [
            (&visa16, &[4, 4, 4, 4][..]),
            (&visa13, &[4, 4, 4, 1]),
            (&visa19, &[4, 4, 4, 4, 3]),
            (&amex, &[4, 6, 5]),
            (&diners, &[4, 6, 4]),
        ] {
            for separator in [" ", "-"] {
                let written = group(card, sizes, separator);
                assert!(valid(Validator::PaymentCard, &written), "{written}");
                let wrong = group(&off_by_one(card), sizes, separator);
                assert!(!valid(Validator::PaymentCard, &wrong), "{wrong}");
            }
        }
    }

    #[test]
    fn card_numbers_in_other_groupings_are_not_cards() {
        let visa16 = with_luhn_digit("453201511283036");
        let visa19 = with_luhn_digit("446449217070478147");
        for (card, sizes) in [
            (&visa16, &[8, 8][..]),
            (&visa16, &[4, 4, 8]),
            (&visa16, &[4, 6, 6]),
            (&visa16, &[3, 4, 4, 5]),
            (&visa16, &[4, 4, 4, 2, 2]),
            (&visa16, &[2, 2, 2, 2, 2, 2, 2, 2]),
            (&visa19, &[4, 4, 4, 7]),
            (&visa19, &[4, 4, 4, 3, 4]),
        ] {
            assert!(valid(Validator::PaymentCard, card), "{card}");
            let written = group(card, sizes, " ");
            assert!(!valid(Validator::PaymentCard, &written), "{written}");
        }
    }

    #[test]
    fn card_numbers_with_mixed_doubled_or_other_separators_are_not_cards() {
        let card = with_luhn_digit("453201511283036");
        let (a, b, c, d) = (&card[0..4], &card[4..8], &card[8..12], &card[12..16]);
        for written in [
            format!("{a} {b}-{c} {d}"),
            format!("{a}-{b}-{c} {d}"),
            format!("{a}  {b} {c} {d}"),
            format!("{a}--{b}-{c}-{d}"),
            format!("{a} - {b} {c} {d}"),
            format!("{a}.{b}.{c}.{d}"),
            format!("{a}/{b}/{c}/{d}"),
            format!(" {card}"),
            format!("{card} "),
            format!("-{card}"),
            format!("{a}\t{b}\t{c}\t{d}"),
            format!("{a}\u{a0}{b}\u{a0}{c}\u{a0}{d}"),
        ] {
            assert!(!valid(Validator::PaymentCard, &written), "{written:?}");
        }
    }

    #[test]
    fn published_test_card_numbers_pass_every_check_but_are_rejected() {
        for card in PUBLISHED_TEST_CARDS {
            // Each would be a card: the list is what rejects it.
            assert!(luhn_valid(card.as_bytes()), "{card}");
            assert!(card_issuer(card.as_bytes()).is_some(), "{card}");
            assert!(is_published_test_card(card.as_bytes()));
            assert!(!valid(Validator::PaymentCard, card), "{card}");
        }
        assert!(!valid(Validator::PaymentCard, "4111 1111 1111 1111"));
        assert!(!valid(Validator::PaymentCard, "4242-4242-4242-4242"));
    }

    #[test]
    fn a_real_shaped_card_next_to_a_test_number_is_still_a_card() {
        // 4111111111111111 is rejected as a test number; change two digits, keep Luhn.
        let card = with_luhn_digit("411111111111121");
        assert_ne!(card, "4111111111111111");
        assert!(valid(Validator::PaymentCard, &card));
    }

    // --- IBAN ------------------------------------------------------------------------------

    #[test]
    fn published_example_ibans_are_valid_compact_and_grouped() {
        for iban in [
            "GB82WEST12345698765432",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "NO9386011117947",
            "CH9300762011623852957",
            "MT84MALT011000012345MTLCAST001S",
            "LC55HEMM000100010012001200023015",
        ] {
            assert!(valid(Validator::Iban, iban), "{iban}");
            assert!(valid(Validator::Iban, &grouped(iban)), "{}", grouped(iban));
        }
        assert!(valid(Validator::Iban, "GB82 WEST 1234 5698 7654 32"));
    }

    #[test]
    fn generated_ibans_of_every_registered_country_are_valid() {
        for (code, length) in IBAN_LENGTHS {
            let country = std::str::from_utf8(&code).unwrap();
            let bban: String = (0..usize::from(length) - 4)
                .map(|i| char::from(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(i * 7 + 3) % 36]))
                .collect();
            let iban = iban_with_check(country, &bban);
            assert_eq!(iban.len(), usize::from(length));
            assert!(valid(Validator::Iban, &iban), "{iban}");
            assert!(valid(Validator::Iban, &grouped(&iban)), "{iban}");
        }
    }

    #[test]
    fn iban_with_check_digits_off_by_one_is_invalid() {
        let iban = iban_with_check("GB", "WEST12345698765432");
        assert_eq!(iban, "GB82WEST12345698765432");
        for wrong in ["GB81WEST12345698765432", "GB83WEST12345698765432"] {
            assert!(!valid(Validator::Iban, wrong), "{wrong}");
        }
        // A single changed BBAN character breaks mod-97 too.
        assert!(!valid(Validator::Iban, "GB82WEST12345698765433"));
        assert!(!valid(Validator::Iban, "GB82WEST12345698765423"));
    }

    #[test]
    fn iban_check_digits_00_01_99_are_invalid_even_when_mod97_passes() {
        // Mod-97 alone accepts the check digits plus or minus 97: 82 + 97 = 179 does not fit, but
        // 01 and 98 differ by 97, as do 00 and 97, and 02 and 99.
        let iban = iban_with_check("DE", "370400440532013000");
        assert_eq!(&iban[2..4], "89");
        let mut found = false;
        for country in ["GB", "DE", "FR", "NL", "BE", "IT", "ES", "AT"] {
            let length = iban_length(country.as_bytes()).unwrap();
            for seed in 0..2000u32 {
                let bban = format!("{:0width$}", seed, width = length - 4);
                let good = iban_with_check(country, &bban);
                let shifted = match &good[2..4] {
                    "98" => "01",
                    "97" => "00",
                    "02" => "99",
                    _ => continue,
                };
                let bad = format!("{country}{shifted}{bban}");
                assert_eq!(
                    iban_mod97(bad.as_bytes()[4..].iter().chain(&bad.as_bytes()[..4])),
                    1
                );
                assert!(valid(Validator::Iban, &good), "{good}");
                assert!(!valid(Validator::Iban, &bad), "{bad}");
                found = true;
            }
        }
        assert!(found, "no check digit of 97, 98 or 02 generated");
    }

    #[test]
    fn iban_of_an_unregistered_country_is_invalid() {
        // Mod-97 is right for each, but US, XX and the lower-case gb have no IBANs.
        for country in ["US", "XX", "ZZ", "CA"] {
            let iban = iban_with_check(country, "WEST12345698765432");
            assert!(!valid(Validator::Iban, &iban), "{iban}");
        }
        assert!(!valid(Validator::Iban, "gb82WEST12345698765432"));
        assert!(!valid(Validator::Iban, "GB82west12345698765432"));
    }

    #[test]
    fn iban_of_the_wrong_length_for_its_country_is_invalid() {
        // Correct check digits, one character short or long for GB (22) and NO (15).
        for (country, bban) in [
            ("GB", "WEST1234569876543"),
            ("GB", "WEST1234569876543210"),
            ("NO", "8601111794"),
            ("NO", "860111179470"),
        ] {
            let iban = iban_with_check(country, bban);
            assert!(!valid(Validator::Iban, &iban), "{iban}");
        }
    }

    #[test]
    fn iban_lengths_match_the_registry_for_spot_checked_countries() {
        for (country, length) in [
            ("NO", 15),
            ("BE", 16),
            ("GB", 22),
            ("DE", 22),
            ("FR", 27),
            ("MT", 31),
            ("LC", 32),
            ("RU", 33),
        ] {
            assert_eq!(iban_length(country.as_bytes()), Some(length), "{country}");
        }
        assert_eq!(iban_length(b"US"), None);
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert!(IBAN_LENGTHS
            .iter()
            .all(|(_, n)| (15..=IBAN_MAX_LEN as u8).contains(n)));
    }

    #[test]
    fn iban_groups_must_be_fours_with_single_spaces() {
        for written in [
            "GB82  WEST 1234 5698 7654 32",
            "GB82 WEST 1234 5698 7654 3 2",
            "CH93 0076 2011 6238 52957",
            "CH93 0076 2011 623 85295 7",
            "GB82WEST 1234 5698 7654 32",
            "GB 82WEST12345698765432",
            " GB82 WEST 1234 5698 7654 32",
            "GB82 WEST 1234 5698 7654 32 ",
            "GB82-WEST-1234-5698-7654-32",
            "GB82\tWEST 1234 5698 7654 32",
        ] {
            assert!(!valid(Validator::Iban, written), "{written:?}");
        }
    }

    // --- US SSN ----------------------------------------------------------------------------

    #[test]
    fn ssn_in_assignable_ranges_is_valid() {
        for ssn in [
            "001-01-0001",
            "536-22-1234",
            "665-99-9999",
            "667-10-0100",
            "899-45-6780",
        ] {
            assert!(valid(Validator::UsSsn, ssn), "{ssn}");
        }
    }

    #[test]
    fn ssn_with_never_assigned_area_group_or_serial_is_invalid() {
        for ssn in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "536-00-1234",
            "536-22-0000",
        ] {
            assert!(!valid(Validator::UsSsn, ssn), "{ssn}");
        }
    }

    #[test]
    fn well_known_sample_ssns_are_invalid() {
        for ssn in ["078-05-1120", "219-09-9999", "123-45-6789"] {
            assert!(!valid(Validator::UsSsn, ssn), "{ssn}");
        }
        // Their neighbours are ordinary numbers.
        assert!(valid(Validator::UsSsn, "078-05-1121"));
        assert!(valid(Validator::UsSsn, "123-45-6788"));
    }

    #[test]
    fn ssn_written_in_any_other_shape_is_invalid() {
        for ssn in [
            "536221234",
            "536 22 1234",
            "536-221-234",
            "536-22-12345",
            "536-22-123",
            "5362-2-1234",
            "53a-22-1234",
            "536_22_1234",
            "",
        ] {
            assert!(!valid(Validator::UsSsn, ssn), "{ssn}");
        }
    }

    // --- e-mail ----------------------------------------------------------------------------

    #[test]
    fn ordinary_addresses_are_personal_data() {
        for address in [
            "jane.doe@acme-corp.co.uk",
            "j@x.io",
            "first.last+tag@mail.company.com",
            "o'brien@firm.ie",
            "a!#$%&'*+/=?^_`{|}~-z@host.museum",
            "UPPER@CASE.COM",
            "noreply@customer.com",
            "no-reply@customer.com",
        ] {
            assert!(valid(Validator::Email, address), "{address}");
        }
    }

    #[test]
    fn malformed_local_parts_are_not_addresses() {
        for address in [
            "@acme.com",
            ".jane@acme.com",
            "jane.@acme.com",
            "ja..ne@acme.com",
            "ja ne@acme.com",
            "ja\"ne@acme.com",
            "ja(ne)@acme.com",
            "a@b@acme.com",
        ] {
            assert!(!valid(Validator::Email, address), "{address}");
        }
        let longest = format!("{}@acme.com", "a".repeat(64));
        assert!(valid(Validator::Email, &longest));
        let too_long = format!("{}@acme.com", "a".repeat(65));
        assert!(!valid(Validator::Email, &too_long));
    }

    #[test]
    fn malformed_domains_are_not_addresses() {
        for address in [
            "jane@",
            "jane@acme",
            "jane@-acme.com",
            "jane@acme-.com",
            "jane@acme..com",
            "jane@.acme.com",
            "jane@acme.com..",
            "jane@ac_me.com",
            "jane@acme.c",
            "jane@acme.abcdefghijklmnopqrstuvwxy",
            "jane@acme.c0m",
        ] {
            assert!(!valid(Validator::Email, address), "{address}");
        }
        let label = format!("jane@{}.com", "a".repeat(63));
        assert!(valid(Validator::Email, &label));
        let long_label = format!("jane@{}.com", "a".repeat(64));
        assert!(!valid(Validator::Email, &long_label));
        // 63 + 1 + 63 + 1 + 63 + 1 + 57 + 1 + 3 = 253 characters of domain: the most allowed.
        let most = format!(
            "{a}.{a}.{a}.{b}.com",
            a = "a".repeat(63),
            b = "b".repeat(57)
        );
        assert_eq!(most.len(), 253);
        assert!(valid(Validator::Email, &format!("jane@{most}")));
        assert!(!valid(Validator::Email, &format!("jane@b{most}")));
    }

    #[test]
    fn one_trailing_full_stop_is_a_sentence_end_not_part_of_the_address() {
        assert!(valid(Validator::Email, "jane.roe@contoso.com."));
        assert!(!valid(Validator::Email, "jane.roe@contoso.com.."));
        // The full stop does not hide a reserved or allow-listed domain.
        assert!(!valid(Validator::Email, "jane.roe@example.com."));
        assert!(!valid(Validator::Email, "icon@2x.png."));
    }

    #[test]
    fn github_noreply_addresses_are_allowed_by_default() {
        let defaults = allowing(DEFAULT_EMAIL_ALLOW_DOMAINS);
        let noreply = b"12345678+octocat@users.noreply.github.com";
        assert!(!Validator::Email.validate(noreply, &defaults));
        assert!(Validator::Email.validate(noreply, &none()));
        assert!(Validator::Email.validate(b"octocat@github.com", &defaults));
    }

    #[test]
    fn reserved_documentation_domains_are_not_personal_data() {
        for address in [
            "user@example.com",
            "user@EXAMPLE.COM",
            "user@mail.example.org",
            "user@example.net",
            "user@corp.example",
            "user@corp.EXAMPLE",
            "user@svc.Test",
            "user@service.test",
            "user@host.invalid",
            "user@app.localhost",
        ] {
            assert!(!valid(Validator::Email, address), "{address}");
        }
        // Only the reserved names themselves: look-alikes are real domains.
        for address in ["user@myexample.com", "user@example.co", "user@testing.io"] {
            assert!(valid(Validator::Email, address), "{address}");
        }
    }

    #[test]
    fn allow_listed_domains_and_their_subdomains_are_not_personal_data() {
        let context = allowing(&["Acme-Corp.com", "internal.io"]);
        let check = |address: &str| Validator::Email.validate(address.as_bytes(), &context);
        assert!(!check("jane@acme-corp.com"));
        assert!(!check("jane@eu.mail.ACME-CORP.com"));
        assert!(!check("bot@internal.io"));
        // Neither a longer name ending the same way nor a parent domain is allowed.
        assert!(check("jane@notacme-corp.com"));
        assert!(check("jane@corp.com"));
        assert!(check("jane@acme-corp.com.evil.net"));
        // Without the allow-list they are findings.
        assert!(valid(Validator::Email, "jane@acme-corp.com"));
    }

    #[test]
    fn empty_allow_list_entries_allow_nothing() {
        let context = allowing(&["", "."]);
        assert!(Validator::Email.validate(b"jane@acme.com", &context));
    }

    #[test]
    fn file_names_and_version_strings_are_not_addresses() {
        for value in [
            "icon@2x.png",
            "logo@3x.PNG",
            "lodash@4.17.21.tgz",
            "bundle@abc.js",
            "package@1.0.json",
            "font@bold.woff2",
            "name@1.2.3",
            "pkg@10.0.1",
        ] {
            assert!(!valid(Validator::Email, value), "{value}");
        }
    }

    // --- phone numbers ---------------------------------------------------------------------

    #[test]
    fn international_numbers_valid_in_their_plans_are_personal_data() {
        for number in [
            // UK, Ofcom drama ranges: London, Birmingham, Manchester, freephone.
            "+44 20 7946 0958",
            "+442079460958",
            "+44 (0)20 7946 0958",
            "+44 (20) 7946 0958",
            "+44 121 496 0123",
            "+44 161 496 0000",
            "+44 808 157 0123",
            // NANP fictional 555-0100..0199 lines (US, Canada).
            "+1 201-555-0123",
            "+1 (201) 555-0123",
            "+1.201.555.0123",
            "+12015550123",
            "+1 212 555 0100",
            "+1 416 555 0123",
            // Australia, ACMA fictional ranges: Sydney landline, mobile.
            "+61 2 5550 1234",
            "+61 (0)2 5550 1234",
            "+61 491 570 156",
            // France, ARCEP fiction range.
            "+33 1 99 00 12 34",
        ] {
            assert!(valid(Validator::Phone, number), "{number}");
        }
    }

    #[test]
    fn international_numbers_outside_their_plans_are_not_phone_numbers() {
        for number in [
            // One digit short or long for a London number.
            "+44 20 7946 095",
            "+44 20 7946 09581",
            // No UK number starts 99; the Ofcom drama mobile range 07700 900xxx is left out of
            // the library's metadata on purpose.
            "+44 99 9999 9999",
            "+44 7700 900123",
            // NANP area codes never start with 0 or 1, and 555 is not an area code.
            "+1 201 055 0123",
            "+1 123 555 0123",
            "+1 555 555 5555",
            // One digit long for the US.
            "+1 201 555 01234",
            // No country has code 999.
            "+999 1234 5678",
            // ARCEP's fictional mobile range 06 39 98 is left out of the metadata.
            "+33 6 39 98 12 34",
        ] {
            assert!(!valid(Validator::Phone, number), "{number}");
        }
    }

    #[test]
    fn international_numbers_must_start_with_plus_and_a_country_code() {
        assert!(!valid(Validator::Phone, "442079460958"));
        assert!(!valid(Validator::Phone, "+ 44 20 7946 0958"));
        assert!(!valid(Validator::Phone, "+(44) 20 7946 0958"));
        assert!(!valid(Validator::Phone, "++44 20 7946 0958"));
        assert!(!valid(Validator::Phone, "0044 20 7946 0958"));
    }

    #[test]
    fn phone_numbers_with_letters_or_odd_punctuation_are_rejected() {
        for number in [
            "+1 201 555 CALL",
            "+1 800 FLOWERS",
            "+44 20 7946 0958 ext 12",
            "+44 20 7946 0958x12",
            "+44 20  7946 0958",
            "+44 20--7946-0958",
            "+44 20 7946 0958 ",
            "+44 (20 7946 0958",
            "+44 20) 7946 0958",
            "+44 (20) (7946) 0958",
            "+44 () 20 7946 0958",
            "+44 (2 0) 7946 0958",
            "+1 (2-01) 555-0123",
            "+1 (201 ) 555-0123",
            "+1 (201555) 0123",
            "+44/20/7946/0958",
            "+44_20_7946_0958",
            "+44 20 7946 0958;",
            "+44\u{a0}20 7946 0958",
        ] {
            assert!(!valid(Validator::Phone, number), "{number:?}");
        }
    }

    #[test]
    fn international_numbers_with_too_few_or_too_many_digits_are_rejected() {
        // 7 digits after the plus: below the 8-digit floor even where a plan has such numbers
        // (Niue's 4-digit subscriber numbers, which the library accepts).
        assert!(!valid(Validator::Phone, "+683 4002"));
        assert!(!valid(Validator::Phone, "+44 20 794"));
        // 8 digits is enough (the Falklands' 5-digit subscriber numbers).
        assert!(valid(Validator::Phone, "+500 31234"));
        // 16 digits: beyond E.164.
        assert!(!valid(Validator::Phone, "+44 20 7946 0958 123"));
        assert!(!valid(Validator::Phone, "+1234567890123456"));
    }

    #[test]
    fn national_numbers_are_validated_in_the_profile_region() {
        let gb = region("GB");
        let us = region("US");
        let au = region("AU");
        let check = |number: &str, context: &ValidationContext| {
            Validator::PhoneNational.validate(number.as_bytes(), context)
        };
        for number in [
            "020 7946 0958",
            "(020) 7946 0958",
            "0121 496 0123",
            "0808 157 0123",
        ] {
            assert!(check(number, &gb), "GB {number}");
        }
        for number in [
            "201-555-0123",
            "(201) 555-0123",
            "1-201-555-0123",
            "416.555.0123",
        ] {
            assert!(check(number, &us), "US {number}");
        }
        for number in ["02 5550 1234", "(02) 5550 1234", "0491 570 156"] {
            assert!(check(number, &au), "AU {number}");
        }
        // Seven digits is enough where the plan has 7-digit numbers (Iceland).
        assert!(check("555 1234", &region("IS")));
        // The same digits read in another region's plan are not numbers there.
        assert!(!check("020 7946 0958", &us));
        assert!(!check("201-055-0123", &us));
        assert!(!check("020 7946 095", &gb));
        assert!(!check("07700 900123", &gb));
        // Seven digits is the floor, even where the plan has shorter numbers (the Falklands'
        // five digits); a US local number without its area code is not valid.
        assert!(!check("31234", &region("FK")));
        assert!(!check("555-0123", &us));
    }

    #[test]
    fn national_numbers_are_never_findings_without_a_known_region() {
        let check = |context: &ValidationContext| {
            Validator::PhoneNational.validate(b"020 7946 0958", context)
        };
        assert!(check(&region("GB")));
        assert!(!check(&none()));
        for unknown in ["", "gb", "XX", "UK", "GBR", "001"] {
            assert!(!check(&region(unknown)), "{unknown:?}");
        }
    }

    #[test]
    fn national_validator_refuses_numbers_written_with_a_plus() {
        let gb = region("GB");
        assert!(!Validator::PhoneNational.validate(b"+44 20 7946 0958", &gb));
        assert!(Validator::Phone.validate(b"+44 20 7946 0958", &gb));
    }

    #[test]
    fn phone_regions_are_upper_case_codes_the_library_has_metadata_for() {
        for known in ["GB", "US", "AU", "DE", "FR", "IN", "JP", "BR"] {
            assert!(is_phone_region(known), "{known}");
        }
        for unknown in ["", "gb", "Us", "XX", "UK", "EU", "GBR", "001", "G", "GB "] {
            assert!(!is_phone_region(unknown), "{unknown:?}");
        }
    }

    #[test]
    fn every_region_the_library_accepts_parses_national_numbers_without_panicking() {
        // Every region id the library lists, each with digit strings that exercise national
        // prefixes, IDDs and transform rules: none may panic.
        let regions: Vec<String> = phonenumber::metadata::DATABASE
            .iter()
            .map(|meta| meta.id().to_string())
            .filter(|id| is_phone_region(id))
            .collect();
        assert!(regions.len() > 200, "{}", regions.len());
        let samples = [
            "0000000",
            "00441234567",
            "011441234567",
            "0123456789012",
            "999999999999999",
            "15123456789",
        ];
        for region_code in &regions {
            let context = region(region_code);
            for sample in samples {
                let _ = Validator::PhoneNational.validate(sample.as_bytes(), &context);
            }
        }
    }

    // --- any bytes -------------------------------------------------------------------------

    #[test]
    fn invalid_utf8_and_control_bytes_are_refused_by_every_validator() {
        let context = ValidationContext {
            phone_region: Some("GB".to_string()),
            email_allow_domains: vec!["acme.com".to_string()],
        };
        let values: [&[u8]; 8] = [
            b"",
            b"\xff\xfe",
            b"4532\xff0151128303",
            b"GB82\x80WEST12345698765432",
            b"jane\xc3@acme.io",
            b"+44 20 7946 \xe2\x80\x8b0958",
            b"020\x007946 0958",
            b"\xc0\xaf",
        ];
        for validator in Validator::ALL {
            for value in values {
                assert!(
                    !validator.validate(value, &context),
                    "{validator:?} {value:?}"
                );
            }
        }
    }

    #[test]
    fn huge_and_random_inputs_never_panic() {
        let context = ValidationContext {
            phone_region: Some("US".to_string()),
            email_allow_domains: vec!["acme.com".to_string()],
        };
        let huge = vec![b'4'; 1 << 20];
        let huge_email = [vec![b'a'; 1 << 16], b"@acme.io".to_vec()].concat();
        for validator in Validator::ALL {
            assert!(!validator.validate(&huge, &context), "{validator:?}");
            assert!(!validator.validate(&huge_email, &context), "{validator:?}");
        }
        // A small deterministic generator over the alphabets the validators care about.
        let alphabet = b"0123456789 +-.()@ABZaz\xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut value = Vec::new();
        for _ in 0..20_000 {
            value.clear();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for i in 0..len {
                let pick = (state >> (i % 50)) as usize ^ i;
                value.push(alphabet[pick % alphabet.len()]);
            }
            for validator in Validator::ALL {
                let _ = validator.validate(&value, &context);
            }
        }
    }
}
