//! Findings with the place they were found: the one type through which findings leave every
//! producer (the JSON walker, the SSE transformer, the tool judge, the JSONL masker) and reach
//! every reader (the policy decision, metrics, the audit log).
//!
//! Invariants:
//! - a [`Located`] carries a rule id, a placeholder, a span and a path — never the secret text;
//! - findings keep the order they were found in (document order for a body, arrival order for a
//!   stream), so the first blocking finding is the first one a reader of the text meets.

use crate::engine::masker::Finding;
use crate::engine::rules::Action;
use std::ops::Deref;

/// A finding and where it was: a JSON path (`messages[3].content[0].text`, `[line 2].…` in
/// JSON Lines), a content block (`content[1]`) or a stream part (`(sse comment)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: String,
    /// `span` is a byte span in the decoded string the finding was made in.
    pub finding: Finding,
}

/// The findings of one text, body or stream, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings(Vec<Located>);

impl Findings {
    pub fn new() -> Findings {
        Findings(Vec::new())
    }

    pub fn push(&mut self, path: impl Into<String>, finding: Finding) {
        self.0.push(Located {
            path: path.into(),
            finding,
        });
    }

    /// Move every finding of `other` to the end of these.
    pub fn append(&mut self, mut other: Findings) {
        if self.0.is_empty() {
            self.0 = other.0;
        } else {
            self.0.append(&mut other.0);
        }
    }

    /// Prefix every path with `parent`, for findings made in a value that sits at `parent` of a
    /// larger document (a tool input inside a message).
    pub fn nest_under(&mut self, parent: &str) {
        for located in &mut self.0 {
            located.path = join_path(parent, &located.path);
        }
    }

    /// Keep only the findings for which `keep` says so, in their order.
    pub fn retain(&mut self, keep: impl FnMut(&Located) -> bool) {
        self.0.retain(keep);
    }

    /// The first finding whose rule acts with `action`.
    pub fn first_with(&self, action: Action) -> Option<&Located> {
        self.0.iter().find(|f| f.finding.action == action)
    }
}

impl Deref for Findings {
    type Target = [Located];

    fn deref(&self) -> &[Located] {
        &self.0
    }
}

impl Extend<Located> for Findings {
    fn extend<I: IntoIterator<Item = Located>>(&mut self, items: I) {
        self.0.extend(items);
    }
}

impl IntoIterator for Findings {
    type Item = Located;
    type IntoIter = std::vec::IntoIter<Located>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Findings {
    type Item = &'a Located;
    type IntoIter = std::slice::Iter<'a, Located>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `child` (a path relative to a value) as a path relative to the document holding that value
/// at `parent`: `content[1].input` + `command` = `content[1].input.command`, + `[0]` =
/// `content[1].input[0]`.
pub fn join_path(parent: &str, child: &str) -> String {
    if child.is_empty() {
        parent.to_string()
    } else if parent.is_empty() || child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_like_json_paths() {
        assert_eq!(join_path("content[1].input", ""), "content[1].input");
        assert_eq!(
            join_path("content[1].input", "command"),
            "content[1].input.command"
        );
        assert_eq!(
            join_path("content[1].input", "[0].x"),
            "content[1].input[0].x"
        );
        assert_eq!(join_path("", "a.b"), "a.b");
    }
}
