//! Hostile inputs: every decoder of outside data, and generate and instantiate over stores that
//! hold adversarial blobs, end in a value or an error naming what is wrong; never a panic or a
//! hang. (The bounded in-CI counterpart of a fuzzing campaign.)

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use sa_cas::merkle::{self, DirectoryBuilder, TreeLimits};
use sa_cas::{
    Cas, Digest, DigestFunction, LocalCas, LocalCasConfig, MemoryCas, Store, write_message,
};
use sa_generator::{ElementTrees, GenerateConfig, GenerateInput};
use sa_instantiator::{ElementState, InstantiateConfig, Instantiator};
use sa_proto::buildstream::v2::{Artifact, SpeculativeActions};
use sa_proto::reapi::{Action, ActionResult, Command, Directory, DirectoryNode};

const F: DigestFunction = DigestFunction::Sha256;

fn generate_over(cas: &(impl Store + ?Sized), root: Digest) -> Result<(), String> {
    let action = write_message(
        cas,
        &Action { input_root_digest: Some(root.to_proto()), ..Default::default() },
    )
    .unwrap();
    let input = GenerateInput {
        element: ElementTrees { name: "e".into(), sources: Some(root), artifact: None },
        dependencies: vec![],
        subactions: vec![action],
        earlier_sources: Vec::new(),
    };
    sa_generator::generate(cas, &input, &GenerateConfig::default())
        .map(|_| ())
        .map_err(|e| sa_cas::error_chain(&e))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let digest = F.hash_bytes(&data);
        let _ = merkle::decode_directory(&digest, &data, &TreeLimits::default());
        let _ = Action::decode(data.as_slice());
        let _ = Command::decode(data.as_slice());
        let _ = ActionResult::decode(data.as_slice());
        let _ = SpeculativeActions::decode(data.as_slice());
        let _ = Artifact::decode(data.as_slice());
        let _ = sa_generator::ActionsIndex::from_blob(F, &digest, &data);
        let _ = sa_generator::ActionsIndex::from_speculative_actions(F, digest, &data);
        let text = String::from_utf8_lossy(&data);
        let _ = Digest::parse(F, &text);
        let _ = Digest::from_proto(F, &sa_proto::reapi::Digest { hash: text.into_owned(), size_bytes: data.len() as i64 - 5 });
    }

    #[test]
    fn a_mutated_directory_is_refused_or_valid(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..6)) {
        let file = F.hash_bytes(b"x");
        let dir = DirectoryBuilder::new().file("a.h", &file, false).file("b.h", &file, true)
            .symlink("l", "a.h").build(F).unwrap();
        let mut data = dir.encode_to_vec();
        for (at, byte) in flips {
            let at = at % data.len();
            data[at] ^= byte;
        }
        let digest = F.hash_bytes(&data);
        if let Ok(dir) = merkle::decode_directory(&digest, &data, &TreeLimits::default()) {
            // Whatever passed is safe to use: every name is one valid segment.
            for name in dir.files.iter().map(|f| &f.name).chain(dir.symlinks.iter().map(|s| &s.name)) {
                prop_assert!(merkle::check_name(name).is_ok(), "{name:?}");
            }
        }
    }

    #[test]
    fn generate_over_a_random_input_root_fails_cleanly_or_succeeds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let cas = MemoryCas::new(F);
        let root = cas.write_blob(Bytes::from(data)).unwrap();
        let _ = generate_over(&cas, root);
    }

    #[test]
    fn instantiate_of_random_speculative_actions_fails_cleanly(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let cas = MemoryCas::new(F);
        let spec = cas.write_blob(Bytes::from(data)).unwrap();
        let state = ElementState { name: "e".into(), ..Default::default() };
        let instantiator = Instantiator::new(&cas, vec![state], InstantiateConfig::default()).unwrap();
        let _ = instantiator.instantiate_element("e", &spec);
    }
}

#[test]
fn a_directory_cycle_planted_in_the_store_is_an_error_not_a_hang() {
    // Content addressing makes cycles impossible unless a store lies. A local store opened
    // without read verification serves whatever file sits under a name: plant a Directory
    // that lists itself (the right size, the wrong hash).
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCasConfig { verify_reads: false, ..Default::default() };
    let cas = std::sync::Arc::new(LocalCas::open(dir.path(), config).unwrap());
    let hash = *F.hash_bytes(b"the digest a liar serves").hash();
    let cyclic = |size: u64| Directory {
        directories: vec![DirectoryNode {
            name: "again".into(),
            digest: Some(Digest::new(F, hash, size).unwrap().to_proto()),
        }],
        ..Default::default()
    };
    let mut size = 0;
    while cyclic(size).encoded_len() as u64 != size {
        size = cyclic(size).encoded_len() as u64;
    }
    let liar = Digest::new(F, hash, size).unwrap();
    let path = cas.blob_path(&liar);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, cyclic(size).encode_to_vec()).unwrap();
    assert_eq!(cas.read_blob(&liar).unwrap().len() as u64, size, "the lie is served");

    let (done, finished) = std::sync::mpsc::channel();
    let planted = cas.clone();
    std::thread::spawn(move || {
        let walked = merkle::fetch_tree(&*planted, &liar, &TreeLimits::default())
            .and_then(|forest| forest.files(&liar).map(|_| ()));
        let generated = generate_over(&*planted, liar);
        done.send((walked.map_err(|e| e.to_string()), generated)).unwrap();
    });
    let (walked, generated) =
        finished.recv_timeout(std::time::Duration::from_secs(60)).expect("the walks end");
    let (walked, generated) = (walked.unwrap_err(), generated.unwrap_err());
    let expected = format!("invalid Directory {liar}: it contains itself");
    assert!(walked.starts_with(&expected), "{walked}");
    assert!(generated.contains(&expected), "{generated}");
}

#[test]
fn a_blob_of_the_wrong_size_is_named() {
    let cas = MemoryCas::new(F);
    let short = Digest::new(F, *F.hash_bytes(b"abc").hash(), 99).unwrap();
    cas.insert_unchecked(short, Bytes::from_static(b"abc"));
    let err = generate_over(&cas, short).unwrap_err();
    assert!(
        err.contains(&format!("blob {short} has 3 bytes, not the 99 its digest says")),
        "{err}"
    );
}
