//! Recognizing a compile and listing what it reads: the command lines `sa record` wraps and
//! that priming re-scans. A library of string and path logic; running the compiler is the
//! caller's.
//!
//! ```
//! use sa_compile::{parse_compile, parse_make_deps};
//!
//! let argv: Vec<String> =
//!     "gcc -O2 -Iinclude -c src/a.c -o obj/a.o".split(' ').map(String::from).collect();
//! let compile = parse_compile(&argv).expect("a single-source compile");
//! assert_eq!(compile.output(), "obj/a.o");
//! // What lists its dependencies instead of compiling: the same flags, with -M.
//! assert!(compile.deps_args().ends_with(&["-M".into(), "-MT".into(), "sa-record-deps".into()]));
//! let files = parse_make_deps("sa-record-deps: src/a.c include/a\\ b.h\n").unwrap();
//! assert_eq!(files, ["src/a.c", "include/a b.h"]);
//! ```

#![deny(missing_docs)]

use std::path::{Component, Path, PathBuf};

mod database;
pub use database::{
    CompileCommand, DatabaseError, parse_compile_commands, split_command, unwrap_record,
};

/// Options that take their value as the next argument.
pub const VALUE_OPTIONS: &[&str] = &[
    "-o",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-MF",
    "-MT",
    "-MQ",
    "-x",
    "-Xpreprocessor",
    "-Xassembler",
    "-Xclang",
    "-aux-info",
    "-arch",
    "-target",
    "--param",
];

/// Options whose value (joined or separate) is a path that may be made relative.
pub const PATH_OPTIONS: &[&str] =
    &["-I", "-isystem", "-iquote", "-idirafter", "-include", "-imacros", "-o", "-MF"];

/// Extensions of the sources a compile without `-x` is recognized by.
pub const SOURCE_EXTENSIONS: &[&str] =
    &["c", "cc", "cp", "cpp", "cxx", "c++", "C", "CPP", "i", "ii", "m", "mm", "s", "S"];

/// A single-source compile found in a command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Compile {
    /// The arguments that list the dependencies (`-M`) instead of compiling.
    deps_args: Vec<String>,
    /// The output file as given.
    output: String,
    /// The dependency file `-MD`/`-MMD` writes, if any.
    dep_file: Option<String>,
    /// The source file, as given.
    source: String,
}

fn value_of(arg: &str, option: &str) -> Option<String> {
    arg.strip_prefix(option).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// Recognizes a single-source compile; `None` for anything else (links, preprocessing,
/// several sources, response files, standard input).
pub fn parse_compile(argv: &[String]) -> Option<Compile> {
    let mut compile_only = false;
    let mut language_given = false;
    let mut output = None;
    let mut dep_file = None;
    let mut writes_deps = false;
    let mut sources = Vec::new();
    let mut deps_args = vec![argv.first()?.clone()];
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let next = argv.get(i + 1).cloned();
        match arg {
            "-c" => compile_only = true,
            "-E" | "-S" | "-M" | "-MM" | "-" => return None,
            "-MD" | "-MMD" => {
                writes_deps = true;
                i += 1;
                continue;
            }
            "-MP" => {
                i += 1;
                continue;
            }
            _ if arg.starts_with('@') => return None,
            _ => {}
        }
        if VALUE_OPTIONS.contains(&arg) {
            let value = next?;
            match arg {
                "-o" => output = Some(value.clone()),
                "-MF" => dep_file = Some(value.clone()),
                "-x" => language_given = true,
                _ => {}
            }
            if !matches!(arg, "-o" | "-MF" | "-MT" | "-MQ") {
                deps_args.extend([arg.to_owned(), value]);
            }
            i += 2;
            continue;
        }
        if let Some(value) = value_of(arg, "-o") {
            output = Some(value);
        } else if let Some(value) = value_of(arg, "-MF") {
            dep_file = Some(value);
        } else if arg.starts_with("-MT") || arg.starts_with("-MQ") {
        } else {
            if !arg.starts_with('-') {
                sources.push(arg.to_owned());
            }
            deps_args.push(arg.to_owned());
        }
        i += 1;
    }
    let [source] = sources.as_slice() else { return None };
    let extension = Path::new(source).extension().and_then(|e| e.to_str()).unwrap_or("");
    if !compile_only || !(language_given || SOURCE_EXTENSIONS.contains(&extension)) {
        return None;
    }
    let output = output.unwrap_or_else(|| {
        let stem = Path::new(source).file_stem().and_then(|s| s.to_str()).unwrap_or("a");
        format!("{stem}.o")
    });
    let dep_file = match (writes_deps, dep_file) {
        (false, _) => None,
        (true, Some(file)) => Some(file),
        (true, None) => Some(match output.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() && !stem.ends_with('/') => format!("{stem}.d"),
            _ => format!("{output}.d"),
        }),
    };
    deps_args.extend(["-M".into(), "-MT".into(), "sa-record-deps".into()]);
    Some(Compile { deps_args, output, dep_file, source: source.clone() })
}

/// A dependency listing that is not the rule [`Compile::deps_args`] asked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the compiler's dependency output does not start with the rule asked for")]
pub struct NotTheRule;

/// The files of a make rule `sa-record-deps: a.c b.h …` as the compiler printed them.
pub fn parse_make_deps(text: &str) -> Result<Vec<String>, NotTheRule> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let Some(rest) = joined.trim_start().strip_prefix("sa-record-deps:") else {
        return Err(NotTheRule);
    };
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|n| *n == ' ' || *n == '#') => {
                current.push(chars.next().expect("peeked"));
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                current.push('$');
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    files.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        files.push(current);
    }
    Ok(files)
}

/// `path` with `.` and `..` resolved lexically.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `target` relative to `base`, both absolute and normalized (with `..` where needed).
pub fn relative_to(target: &Path, base: &Path) -> String {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); b.len() - common];
    parts.extend(t[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

/// A path under `root` as a slash-separated relative string.
pub fn under(path: &Path, root: &Path) -> Option<String> {
    let rest = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rest.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    Some(parts.join("/"))
}

/// The arguments with absolute paths under `root` made relative to `cwd` (recc does the same),
/// so the Action does not depend on where the tree is checked out.
pub fn relativize_args(argv: &[String], root: &Path, cwd: &Path) -> Vec<String> {
    let rewrite = |text: &str| -> Option<String> {
        let path = Path::new(text);
        (path.is_absolute() && normalize(path).starts_with(root))
            .then(|| relative_to(&normalize(path), cwd))
    };
    let mut out = vec![argv[0].clone()];
    for arg in &argv[1..] {
        let joined = PATH_OPTIONS.iter().find_map(|option| {
            let value = arg.strip_prefix(option).filter(|v| v.starts_with('/'))?;
            Some(format!("{option}{}", rewrite(value)?))
        });
        out.push(joined.or_else(|| rewrite(arg)).unwrap_or_else(|| arg.clone()));
    }
    out
}

impl Compile {
    /// The arguments that list the dependencies (`-M -MT sa-record-deps`) instead of
    /// compiling: the compiler first, the same flags and source, no output.
    pub fn deps_args(&self) -> &[String] {
        &self.deps_args
    }

    /// The object file, as given (or the compiler's default, `SOURCE_STEM.o`).
    pub fn output(&self) -> &str {
        &self.output
    }

    /// The dependency file `-MD`/`-MMD` writes, if any.
    pub fn dep_file(&self) -> Option<&str> {
        self.dep_file.as_deref()
    }

    /// The source file, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The outputs (object and dependency file) as a Command lists them: relative to the
    /// working directory, normalized, sorted; `None` when one is absolute or outside it (`sa
    /// record` does not record such a compile).
    pub fn output_paths(&self) -> Option<Vec<String>> {
        let mut outputs = Vec::new();
        for output in std::iter::once(self.output()).chain(self.dep_file()) {
            outputs.push(below(".", output)?);
        }
        outputs.sort();
        Some(outputs)
    }
}

/// `path` (relative to `directory`, both relative) as a normalized path below the directory's
/// root: `None` when it is absolute, empty, or climbs out.
pub fn below(directory: &str, path: &str) -> Option<String> {
    if Path::new(path).is_absolute() || Path::new(directory).is_absolute() {
        return None;
    }
    let joined = Path::new(directory).join(path);
    let mut parts: Vec<&str> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failing unwrap names the line, which is what a test wants
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn recognizes_single_source_compiles_only() {
        let compile = parse_compile(&argv("gcc -O2 -Iinc -c src/a.c -o obj/a.o -MD")).unwrap();
        assert_eq!(compile.output, "obj/a.o");
        assert_eq!(compile.dep_file.as_deref(), Some("obj/a.d"));
        assert_eq!(compile.deps_args, argv("gcc -O2 -Iinc -c src/a.c -M -MT sa-record-deps"));
        let compile = parse_compile(&argv("cc -c x.cpp -MMD -MF deps/x.dep -I inc")).unwrap();
        assert_eq!(
            (compile.output.as_str(), compile.dep_file.as_deref()),
            ("x.o", Some("deps/x.dep"))
        );
        for not_a_compile in [
            "gcc a.o b.o -o app",
            "gcc -c a.c b.c",
            "gcc -E a.c",
            "gcc -c -",
            "gcc @args.rsp",
            "gcc -c notes.txt",
            "gcc -c a.c -o",
            "ar rcs lib.a a.o",
        ] {
            assert_eq!(parse_compile(&argv(not_a_compile)), None, "{not_a_compile}");
        }
        assert!(parse_compile(&argv("gcc -x c -c notes.txt")).is_some());
    }

    #[test]
    fn parses_make_rules_with_escapes_and_continuations() {
        let text = "sa-record-deps: a.c /usr/include/stdio.h \\\n  my\\ dir/b.h c$$.h\n";
        assert_eq!(
            parse_make_deps(text).unwrap(),
            ["a.c", "/usr/include/stdio.h", "my dir/b.h", "c$.h"]
        );
        assert!(parse_make_deps("other: a.c").is_err());
    }

    #[test]
    fn absolute_paths_under_the_root_become_relative() {
        let root = Path::new("/w/root");
        let cwd = Path::new("/w/root/app");
        let args = argv(
            "gcc -I/w/root/sysroot/include -c /w/root/app/main.c -o /w/root/app/m.o -I/usr/include",
        );
        assert_eq!(
            relativize_args(&args, root, cwd),
            argv("gcc -I../sysroot/include -c main.c -o m.o -I/usr/include")
        );
    }
}
