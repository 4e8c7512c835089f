//! Where in the file a key is: the line of a dotted key for errors found after parsing, and
//! serde_yaml's parse errors turned into located, plainly worded [`ConfigError`]s.

use super::error::ConfigError;

/// A parse error from serde_yaml as a [`ConfigError`]: its key and line, and its message in
/// the words of the config.
pub(super) fn from_yaml_error(e: &serde_yaml::Error, text: &str) -> ConfigError {
    // serde_yaml's message already carries the key path ("tls.intercept: ...") and the
    // position; keep the message and expose the line separately.
    let full = e.to_string();
    // The position is reported separately.
    let full = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (key, message) = match full.split_once(": ") {
        Some((k, rest)) if !k.is_empty() && !k.contains(' ') => (Some(k.to_string()), rest),
        _ => (None, full),
    };
    let mut line = e.location().map(|l| l.line());
    // serde_yaml places a mapping's own errors at the mapping's first key (line 1 for the
    // top level), which for a duplicate is the wrong line: point at the repeated key.
    if let (Some(dup), Some(at)) = (duplicated_key(message), e.location()) {
        line = repeated_key_line(text, at.line(), at.column(), dup).or(line);
    }
    ConfigError {
        file: None,
        key,
        line,
        message: humanize(message),
    }
}

/// The key a serde "duplicate" message names: "duplicate field `proxy`" (a struct) or
/// `duplicate entry with key "a.test"` (a map).
fn duplicated_key(message: &str) -> Option<&str> {
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        return rest.split_once('`').map(|(k, _)| k);
    }
    let rest = message.strip_prefix("duplicate entry with key \"")?;
    rest.split_once('"').map(|(k, _)| k)
}

/// The line of the second `key` of the block mapping whose first key sits at `line`:`column`
/// (1-based); `None` for flow mappings or when it is not found.
fn repeated_key_line(text: &str, line: usize, column: usize, key: &str) -> Option<usize> {
    let col = column.checked_sub(1)?;
    let mut seen = 0;
    for (i, raw) in text.lines().enumerate().skip(line.checked_sub(1)?) {
        let indent = raw.chars().take_while(|c| *c == ' ').count();
        let body = raw.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let entry: String = if i + 1 == line {
            // The first key may follow a list marker (`- host: ...`).
            raw.chars().skip(col).collect()
        } else if indent < col {
            break;
        } else if indent > col || body.starts_with("- ") {
            continue;
        } else {
            body.to_string()
        };
        let this = entry
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''));
        if this == Some(key) {
            seen += 1;
            if seen == 2 {
                return Some(i + 1);
            }
        }
    }
    None
}

/// serde's wording for a bad scalar, in the words of the config: no Rust type names, and a
/// duration comes with an example.
pub(super) fn humanize(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number (negative allowed)"),
        ("expected i32", "expected a whole number (negative allowed)"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        (
            "expected a duration",
            "expected a duration such as 10s or 500ms",
        ),
    ];
    // An out-of-range integer is shown "as u128"; the number alone says enough.
    let mut out = message.replace(" as u128", "").replace(" as i128", "");
    for (rust, words) in WORDS {
        let mut from = 0;
        while let Some(at) = out[from..].find(rust).map(|i| i + from) {
            let end = at + rust.len();
            if out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                from = end;
                continue;
            }
            out.replace_range(at..end, words);
            from = at + words.len();
        }
    }
    out
}

/// Finds the line of a dotted key (`tls.ca_key`, `proxy.auth.clients[1].token`) in
/// block-style YAML, for errors found after parsing. Returns the line of the deepest part found,
/// or `None` (flow style, absent key).
pub fn locate(text: &str, dotted: &str) -> Option<usize> {
    // (line index, indent of the content, content without a list marker)
    let lines: Vec<(usize, usize, &str)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') {
                return None;
            }
            Some((i, line.len() - body.len(), body))
        })
        .collect();
    fn key_of(body: &str) -> Option<&str> {
        body.split_once(':')
            .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''))
    }
    let mut found = None;
    let mut from = 0; // index into `lines`
    let mut min_indent = 0;
    for segment in dotted.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let mut hit = None;
        for (pos, &(i, indent, body)) in lines.iter().enumerate().skip(from) {
            let (indent, body) = match body.strip_prefix("- ") {
                Some(rest) => (indent + 2, rest),
                None => (indent, body),
            };
            if pos > from && indent < min_indent {
                break;
            }
            // A top-level key sits at the margin: the same key inside a client's section is
            // another one.
            let level = indent >= min_indent && (found.is_some() || indent == 0);
            if level && key_of(body) == Some(key) {
                hit = Some((pos, i, indent));
                break;
            }
        }
        let Some((pos, line, indent)) = hit else {
            return found;
        };
        found = Some(line + 1);
        from = pos + 1;
        min_indent = indent + 1;
        if let Some(n) = index {
            let mut item_indent = None;
            let mut seen = 0;
            let mut item = None;
            for (pos, &(i, indent, body)) in lines.iter().enumerate().skip(from) {
                if indent < min_indent {
                    break;
                }
                if !body.starts_with("- ") || item_indent.is_some_and(|d| d != indent) {
                    continue;
                }
                item_indent = Some(indent);
                if seen == n {
                    item = Some((pos, i, indent + 2));
                    break;
                }
                seen += 1;
            }
            let Some((pos, line, indent)) = item else {
                return found;
            };
            found = Some(line + 1);
            from = pos;
            min_indent = indent;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_keys() {
        let text = "a: 1\ntls:\n  # c\n  ca_cert: x\n  ca_key: y\nlimits:\n  ca_key: z\n";
        assert_eq!(locate(text, "tls.ca_key"), Some(5));
        assert_eq!(locate(text, "limits.ca_key"), Some(7));
        assert_eq!(locate(text, "a"), Some(1));
        assert_eq!(locate(text, "nope"), None);
        let list = "proxy:\n  auth:\n    clients:\n      - name: a\n        token: x\n      - name: b\n        # c\n        token: y\n";
        assert_eq!(locate(list, "proxy.auth.clients[0].token"), Some(5));
        assert_eq!(locate(list, "proxy.auth.clients[1].token"), Some(8));
        assert_eq!(locate(list, "proxy.auth.clients[1].name"), Some(6));
        assert_eq!(locate(list, "proxy.auth.clients[5].name"), Some(3));
        let nested =
            "proxy:\n  auth:\n    clients:\n      - llm:\n          - host: a\nllm:\n  - host: b\n";
        assert_eq!(locate(nested, "llm[0].host"), Some(7));
    }
}
