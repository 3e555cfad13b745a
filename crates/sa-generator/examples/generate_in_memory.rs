//! sa-generator alone, on an in-memory store: an application element whose one compile step
//! read its own source and a header from its dependency's artifact. Generates its
//! `SpeculativeActions` and prints each overlay: where each input file of the step came from.
//!
//! `cargo run -p sa-generator --example generate_in_memory`

use prost::Message;
use sa_cas::merkle::{self, TreeFile};
use sa_cas::{Cas, DigestFunction, MemoryCas, write_message};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput, generate};
use sa_proto::buildstream::v2::SpeculativeActions;
use sa_proto::reapi::{Action, Command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let main_c = cas.write_blob("#include \"lib.h\"\nint main(void) { return LIB; }\n".into())?;
    let lib_h = cas.write_blob("#define LIB 0\n".into())?;
    let sources = merkle::build_tree(&cas, &[TreeFile::new("src/main.c", main_c, false)])?;
    let artifact = merkle::build_tree(&cas, &[TreeFile::new("include/lib.h", lib_h, false)])?;
    // The compile step's input root: the source and the header, as the build staged them.
    let root = merkle::build_tree(
        &cas,
        &[TreeFile::new("src/main.c", main_c, false), TreeFile::new("include/lib.h", lib_h, false)],
    )?;
    let command = Command {
        arguments: vec!["cc".into(), "-Iinclude".into(), "-c".into(), "src/main.c".into()],
        output_paths: vec!["main.o".into()],
        ..Default::default()
    };
    let action = Action {
        command_digest: Some(write_message(&cas, &command)?.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let action = write_message(&cas, &action)?;
    let input = GenerateInput {
        element: ElementTrees { name: "app.bst".into(), sources: Some(sources), artifact: None },
        dependencies: vec![ElementTrees {
            name: "lib.bst".into(),
            sources: None,
            artifact: Some(artifact),
        }],
        subactions: vec![action],
        earlier_sources: Vec::new(),
    };
    let generated = generate(&cas, &input, &GenerateConfig::default())?;
    println!("SpeculativeActions {} ({} overlays)", generated.digest, generated.stats.overlays());
    for speculative in SpeculativeActions::decode(cas.read_blob(&generated.digest)?)?.actions {
        for overlay in speculative.overlays {
            let element =
                if overlay.source_element.is_empty() { "app.bst" } else { &overlay.source_element };
            println!("  {:?} {element}:{}", overlay.r#type(), overlay.source_path);
        }
    }
    Ok(())
}
