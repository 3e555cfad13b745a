//! Says whether a command line is a compile `sa` recognizes, and if so what lists its inputs.
//! `cargo run -p sa-compile --example recognize -- gcc -Iinclude -c src/a.c -o obj/a.o`

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        argv = "gcc -Iinclude -c src/a.c -o obj/a.o -MD".split(' ').map(String::from).collect();
    }
    match sa_compile::parse_compile(&argv) {
        Some(compile) => {
            println!("compile of {} (dependency file: {:?})", compile.output(), compile.dep_file());
            println!("inputs listed by: {}", compile.deps_args().join(" "));
        }
        None => println!("not a single-source compile: runs unchanged"),
    }
}
