//! `$(VAR)` expansion in `command`, `args` and env values, with the kubelet's rules
//! (upstream's third_party/forked/golang/expansion): `$(NAME)` becomes NAME's value when
//! NAME is defined; an undefined or unterminated reference is left as written; `$$` is an
//! escaped `$`, so `$$(NAME)` stays literally `$(NAME)`.

/// Expands `input` with `lookup`; references `lookup` does not know stay as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            i += 1;
            continue;
        }
        out.push_str(&input[literal_start..i]);
        match bytes[i + 1] {
            b'$' => {
                out.push('$');
                i += 2;
            }
            b'(' => match input[i + 2..].find(')') {
                Some(len) => {
                    let name = &input[i + 2..i + 2 + len];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => out.push_str(&input[i..i + 3 + len]),
                    }
                    i += 3 + len;
                }
                None => {
                    out.push_str(&input[i..]);
                    i = bytes.len();
                }
            },
            _ => {
                // A lone `$` is kept, with the character after it.
                out.push('$');
                i += 1;
            }
        }
        literal_start = i;
    }
    out.push_str(&input[literal_start.min(input.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD" => Some("web-1".into()),
            "EMPTY" => Some(String::new()),
            "NS" => Some("shop".into()),
            _ => None,
        }
    }

    #[test]
    fn defined_references_are_replaced() {
        assert_eq!(expand("$(POD)", env), "web-1");
        assert_eq!(expand("name=$(POD).$(NS)!", env), "name=web-1.shop!");
        assert_eq!(expand("[$(EMPTY)]", env), "[]");
    }

    #[test]
    fn undefined_and_unterminated_references_stay() {
        assert_eq!(expand("$(NOPE)", env), "$(NOPE)");
        assert_eq!(expand("a $(POD", env), "a $(POD");
        assert_eq!(expand("$(", env), "$(");
    }

    #[test]
    fn dollar_escapes() {
        assert_eq!(expand("$$(POD)", env), "$(POD)");
        assert_eq!(expand("$$$(POD)", env), "$web-1");
        assert_eq!(expand("cost: 5$", env), "cost: 5$");
        assert_eq!(expand("$HOME", env), "$HOME");
        assert_eq!(expand("a$$b", env), "a$b");
    }

    #[test]
    fn no_references_is_identity() {
        assert_eq!(expand("", env), "");
        assert_eq!(expand("plain text (x)", env), "plain text (x)");
        assert_eq!(expand("ünïcode $(POD) ✓", env), "ünïcode web-1 ✓");
    }
}
