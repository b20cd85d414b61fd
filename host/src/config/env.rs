//! Environment variables in config files, as Vector and Docker Compose
//! interpolate them: `${NAME}` is the variable's value, `${NAME:-default}`
//! the default when it is unset or empty, `$$` a literal `$`. A variable
//! that is unset without a default is an error naming it, so a container
//! started without its settings fails at once instead of running with
//! an empty broker list or password. Interpolation happens on the file's
//! text before TOML parsing (comments included).

/// `text` with every `${...}` replaced by `lookup`; the names of unset
/// variables without a default, or a malformed reference, as the error.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                problems.push(format!("`${{` without a closing `}}`: {}", snippet(rest)));
                out.push_str(rest);
                rest = "";
                break;
            };
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!("`${{{reference}}}` is not a variable reference like ${{NAME}} or ${{NAME:-default}}"));
            } else {
                match (lookup(name).filter(|v| !v.is_empty()), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => problems.push(format!(
                        "environment variable {name} is not set (the config uses ${{{name}}}; give a default with ${{{name}:-value}})"
                    )),
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn snippet(s: &str) -> &str {
    let end = s
        .char_indices()
        .nth(40)
        .map_or(s.len(), |(i, _)| i)
        .min(s.find('\n').unwrap_or(s.len()));
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("kafka-0:9092,kafka-1:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_defaults_and_escapes_are_replaced() {
        let got = interpolate(
            "a = \"${BROKERS}\"\nb = \"${MISSING:-127.0.0.1:9092}\"\nc = \"${EMPTY:-x}\"\nd = \"$$5 and $ alone\"\n",
            env,
        )
        .unwrap();
        assert_eq!(
            got,
            "a = \"kafka-0:9092,kafka-1:9092\"\nb = \"127.0.0.1:9092\"\nc = \"x\"\nd = \"$5 and $ alone\"\n"
        );
        assert_eq!(interpolate("no references", env).unwrap(), "no references");
    }

    #[test]
    fn unset_variables_and_bad_references_are_errors_that_name_them() {
        let err = interpolate("a = \"${NOPE}\" b = \"${EMPTY}\" c = \"${1X}\"", env).unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(err[0].contains("NOPE"), "{err:?}");
        assert!(err[1].contains("EMPTY"), "{err:?}");
        assert!(err[2].contains("1X"), "{err:?}");
        let err = interpolate("a = \"${OPEN", env).unwrap_err();
        assert!(err[0].contains("closing"), "{err:?}");
    }
}
