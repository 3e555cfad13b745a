//! JSON compilation databases (`compile_commands.json`: CMake, `ninja -t compdb`, Bear,
//! `compiledb` over `make -n`), read as the compiles a build is about to run.

use serde_json::Value;

/// One entry of a compilation database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileCommand {
    /// The directory the compile runs in, as written (absolute in every producer's output).
    pub directory: String,
    /// The source file, as written.
    pub file: String,
    /// The command line: `arguments`, or `command` split as a POSIX shell splits words; a
    /// `sa record … -- COMPILER ARGS` wrapper is taken off ([`unwrap_record`]).
    pub arguments: Vec<String>,
}

/// Why a compilation database cannot be read: which entry, which field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseError {
    /// Not JSON, or not an array.
    #[error("not a JSON compilation database (an array of entries): {0}")]
    NotADatabase(String),
    /// An entry lacks a field or has one of the wrong type.
    #[error("entry {index}: {what}")]
    Entry {
        /// The entry's position, from 0.
        index: usize,
        /// What is wrong with it.
        what: String,
    },
}

/// The entries of the compilation database `text`.
pub fn parse_compile_commands(text: &str) -> Result<Vec<CompileCommand>, DatabaseError> {
    let value: Value =
        serde_json::from_str(text).map_err(|err| DatabaseError::NotADatabase(err.to_string()))?;
    let Value::Array(entries) = value else {
        return Err(DatabaseError::NotADatabase("the top level is not an array".into()));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let bad = |what: String| DatabaseError::Entry { index, what };
        let text_field = |name: &str| -> Result<String, DatabaseError> {
            entry[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("{name:?} is missing or not a string")))
        };
        let directory = text_field("directory")?;
        let file = text_field("file")?;
        let arguments = match (&entry["arguments"], &entry["command"]) {
            (Value::Array(arguments), _) => arguments
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| bad("\"arguments\" holds a value that is not a string".into()))?,
            (Value::Null, Value::String(command)) => split_command(command)
                .ok_or_else(|| bad(format!("\"command\" has an unterminated quote: {command}")))?,
            _ => {
                return Err(bad(
                    "neither \"arguments\" (strings) nor \"command\" (a string)".into()
                ));
            }
        };
        if arguments.is_empty() {
            return Err(bad("the command line is empty".into()));
        }
        out.push(CompileCommand { directory, file, arguments: unwrap_record(&arguments).to_vec() });
    }
    Ok(out)
}

/// A command line split into words as a POSIX shell does (single and double quotes,
/// backslashes; no expansions); `None` for an unterminated quote.
pub fn split_command(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => word.push(c),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The compiler's command line inside a `sa record [OPTIONS] -- COMPILER ARGS` wrapper (a
/// dry run with the wrapper as `CC`); any other command line as it is.
pub fn unwrap_record(argv: &[String]) -> &[String] {
    let is_sa = argv.first().is_some_and(|a| a == "sa" || a.ends_with("/sa"));
    if !is_sa {
        return argv;
    }
    let Some(record) = argv.iter().position(|a| a == "record") else { return argv };
    match argv[record..].iter().position(|a| a == "--") {
        Some(dashes) if record + dashes + 1 < argv.len() => &argv[record + dashes + 1..],
        _ => argv,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    #[test]
    fn reads_arguments_and_commands_and_unwraps_sa_record() {
        let text = r#"[
          {"directory": "/w/lib", "file": "a.c", "arguments": ["gcc", "-c", "a.c", "-o", "a.o"]},
          {"directory": "/w/lib", "file": "b c.c",
           "command": "/opt/sa --cas /s record --root /w -- gcc -DX='1 2' -c \"b c.c\" -o b.o"}
        ]"#;
        let entries = parse_compile_commands(text).unwrap();
        assert_eq!(entries[0].arguments, ["gcc", "-c", "a.c", "-o", "a.o"]);
        assert_eq!(entries[1].arguments, ["gcc", "-DX=1 2", "-c", "b c.c", "-o", "b.o"]);
        assert_eq!(entries[1].directory, "/w/lib");
    }

    #[test]
    fn a_bad_entry_is_named() {
        for (text, expect) in [
            ("{}", "not a JSON compilation database"),
            ("[1", "not a JSON compilation database"),
            (r#"[{"file": "a.c", "arguments": ["gcc"]}]"#, "entry 0: \"directory\""),
            (r#"[{"directory": "/", "file": "a.c", "arguments": [1]}]"#, "entry 0: \"arguments\""),
            (r#"[{"directory": "/", "file": "a.c", "command": "gcc 'x"}]"#, "unterminated"),
            (r#"[{"directory": "/", "file": "a.c", "arguments": []}]"#, "empty"),
            (r#"[{"directory": "/", "file": "a.c"}]"#, "neither"),
        ] {
            let err = parse_compile_commands(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_command(r#"a  'b c' "d \"e\"" f\ g"#).unwrap(),
            ["a", "b c", "d \"e\"", "f g"]
        );
        assert_eq!(split_command("''").unwrap(), [""]);
        assert_eq!(split_command("a \"b"), None);
    }
}
