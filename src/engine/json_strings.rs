//! Every string value of a JSON document with its path in the walker's notation
//! (`messages[3].content[0].text`, keys that are not plain words as `["…"]`), for readers that
//! look at a request's text after the walk (approval lines, protected-code fingerprints).
//!
//! Invariant: the paths are the ones [`crate::engine::json_walk`] reports for the same strings,
//! so a finding made here and one made by the walker name the same place alike.

use super::json_walk::push_path_key;
use serde_json::Value;

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn render(path: &[Segment<'_>]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
            Segment::Key(name) => push_path_key(&mut out, name),
        }
    }
    out
}

/// Call `visit(path, text)` for every string value of `document`, in document order (object
/// keys are not values and are not visited).
pub fn for_each_string<'a>(document: &'a Value, visit: &mut dyn FnMut(&str, &'a str)) {
    fn walk<'a>(
        value: &'a Value,
        path: &mut Vec<Segment<'a>>,
        visit: &mut dyn FnMut(&str, &'a str),
    ) {
        match value {
            Value::String(text) => visit(&render(path), text),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    path.push(Segment::Index(index));
                    walk(item, path, visit);
                    path.pop();
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    path.push(Segment::Key(key));
                    walk(item, path, visit);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    walk(document, &mut Vec::new(), visit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_the_walker_notation() {
        let document: Value = serde_json::from_str(
            r#"{"messages":[{"content":[{"text":"a"}]}],"odd key":"b","n":1,"x":{"y-z":"c"}}"#,
        )
        .expect("json");
        let mut seen = Vec::new();
        for_each_string(&document, &mut |path, text| {
            seen.push((path.to_string(), text.to_string()))
        });
        let expected = [
            ("messages[0].content[0].text", "a"),
            ("[\"odd key\"]", "b"),
            ("x.y-z", "c"),
        ];
        assert_eq!(
            seen,
            expected
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect::<Vec<_>>()
        );
    }
}
