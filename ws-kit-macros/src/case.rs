//! Name conversions: struct names to type tags, field names to wire names.

/// `JoinRoom` → `JOIN_ROOM`, `HTTPRequest` → `HTTP_REQUEST`, `Room2Msg` → `ROOM2_MSG`.
pub(crate) fn screaming_snake(name: &str) -> String {
    words(name).join("_").to_uppercase()
}

/// Applies a serde-style `rename_all` rule to a Rust field name (snake_case by convention).
/// Returns `None` for an unknown rule.
pub(crate) fn rename_field(field: &str, rule: &str) -> Option<String> {
    let parts: Vec<String> = field
        .split('_')
        .filter(|p| !p.is_empty())
        .map(str::to_lowercase)
        .collect();
    let capitalized = || parts.iter().map(|p| capitalize(p)).collect::<String>();
    Some(match rule {
        "camelCase" => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                if i == 0 {
                    out.push_str(p);
                } else {
                    out.push_str(&capitalize(p));
                }
            }
            out
        }
        "PascalCase" => capitalized(),
        "snake_case" => parts.join("_"),
        "SCREAMING_SNAKE_CASE" => parts.join("_").to_uppercase(),
        "kebab-case" => parts.join("-"),
        "lowercase" => parts.concat(),
        "UPPERCASE" => parts.concat().to_uppercase(),
        _ => return None,
    })
}

/// The `rename_all` rules [`rename_field`] accepts, for error messages.
pub(crate) const RULES: &str = "`camelCase`, `PascalCase`, `snake_case`, `SCREAMING_SNAKE_CASE`, `kebab-case`, `lowercase`, `UPPERCASE`";

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Splits a PascalCase or camelCase identifier into words, keeping acronyms together.
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if c.is_uppercase() && !current.is_empty() {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_uppercase() && next_is_lower)
            {
                out.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_tags() {
        assert_eq!(screaming_snake("JoinRoom"), "JOIN_ROOM");
        assert_eq!(screaming_snake("Ping"), "PING");
        assert_eq!(screaming_snake("HTTPRequest"), "HTTP_REQUEST");
        assert_eq!(screaming_snake("Room2Msg"), "ROOM2_MSG");
        assert_eq!(screaming_snake("CountdownResult"), "COUNTDOWN_RESULT");
    }

    #[test]
    fn field_names() {
        assert_eq!(rename_field("room_id", "camelCase").unwrap(), "roomId");
        assert_eq!(rename_field("text", "camelCase").unwrap(), "text");
        assert_eq!(
            rename_field("interval_ms", "PascalCase").unwrap(),
            "IntervalMs"
        );
        assert_eq!(rename_field("room_id", "kebab-case").unwrap(), "room-id");
        assert!(rename_field("x", "Title Case").is_none());
    }
}
