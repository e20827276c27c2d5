//! Properties of password-file lines: the first line that matches gives
//! its password, escapes undone, whatever the fields hold; any text is read
//! without panic.

mod support;

use powa_fleet_actors::pgpass::find;
use proptest::prelude::*;

/// A field of a line: a wildcard, or a value written with `\` before `:`
/// and `\` (and before a value `*` and a leading `#`, which would make a
/// wildcard and a comment).
#[derive(Debug, Clone)]
enum Field {
    Any,
    Is(String),
}

impl Field {
    fn render(&self) -> String {
        match self {
            Field::Any => "*".to_string(),
            Field::Is(v) => {
                let escaped = v.replace('\\', "\\\\").replace(':', "\\:");
                if v == "*" || v.starts_with('#') {
                    format!("\\{escaped}")
                } else {
                    escaped
                }
            }
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Field::Any => true,
            Field::Is(v) => v == value,
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-c]{1,2}",
        2 => "[a:\\\\*#]{1,4}",
        1 => "[^\n\r]{1,10}",
    ]
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![1 => Just(Field::Any), 4 => text().prop_map(Field::Is)]
}

#[derive(Debug, Clone)]
struct Entry {
    fields: [Field; 4],
    password: String,
}

impl Entry {
    fn render(&self) -> String {
        let fields: Vec<String> = self.fields.iter().map(Field::render).collect();
        let password = Field::Is(self.password.clone()).render();
        format!("{}:{password}", fields.join(":"))
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    ([field(), field(), field(), field()], text())
        .prop_map(|(fields, password)| Entry { fields, password })
}

/// Lines that never match: comments, and lines of fewer than five fields.
fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        "#[^\n\r]{0,10}",
        "[a*]{0,3}(:[a*]{0,3}){0,3}",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(support::share(0.7))]
    #[test]
    fn first_matching_line_gives_its_password(
        lines in prop::collection::vec(
            prop_oneof![3 => entry().prop_map(Ok), 1 => noise().prop_map(Err)],
            0..8,
        ),
        query in (text(), 0u16..3, text(), text()),
        pick in any::<prop::sample::Index>(),
        crlf in any::<bool>(),
    ) {
        let entries: Vec<&Entry> = lines.iter().filter_map(|l| l.as_ref().ok()).collect();
        // Half the time, ask for what one of the lines names.
        let (host, port, db, user) = match entries.get(pick.index(entries.len().max(1))) {
            Some(e) if query.1 == 0 => {
                let value = |f: &Field, default: &str| match f {
                    Field::Is(v) => v.clone(),
                    Field::Any => default.to_string(),
                };
                let port = match &e.fields[1] {
                    Field::Is(v) => v.parse().unwrap_or(5432),
                    Field::Any => 5432,
                };
                (value(&e.fields[0], "h"), port, value(&e.fields[2], "d"), value(&e.fields[3], "u"))
            }
            _ => (query.0, query.1 + 5432, query.2, query.3),
        };
        let eol = if crlf { "\r\n" } else { "\n" };
        let file: String = lines
            .iter()
            .map(|l| match l { Ok(e) => e.render(), Err(noise) => noise.clone() } + eol)
            .collect();
        let wanted = [host.as_str(), &port.to_string(), db.as_str(), user.as_str()];
        let expected = entries
            .iter()
            .find(|e| e.fields.iter().zip(wanted).all(|(f, w)| f.matches(w)))
            .map(|e| e.password.clone())
            .filter(|p| !p.is_empty());
        prop_assert_eq!(find(&file, &host, port, &db, &user), expected, "{:?}", file);
    }
}

proptest! {
    #![proptest_config(support::share(0.3))]
    #[test]
    fn any_text_is_read_without_panic(text in any::<String>(), host in text(), user in text()) {
        if let Some(password) = find(&text, &host, 5432, "d", &user) {
            prop_assert!(!password.is_empty());
            prop_assert!(!password.contains('\n'));
        }
        // A line of wildcards gives its password field, escapes undone.
        let wildcard = format!("*:*:*:*:{text}");
        let first = wildcard.lines().next().unwrap_or_default();
        match find(&wildcard, &host, 1, "d", &user) {
            Some(password) => {
                prop_assert!(!password.is_empty());
                prop_assert!(password.chars().all(|c| first.contains(c)));
            }
            None => prop_assert!(first == "*:*:*:*:" || first.starts_with("*:*:*:*::")),
        }
    }
}
