//! The Merkle toolkit: canonical Directories, validation, walks, ingest and materialize.

use proptest::prelude::*;
use prost::Message;
use sa_cas::merkle::{self, DirectoryBuilder, MaterializeOptions, TreeLimits};
use sa_cas::{Blob, Cas, CasError, Digest, DigestFunction, MemoryCas};
use sa_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};

const SHA: DigestFunction = DigestFunction::Sha256;

fn put_dir(cas: &MemoryCas, dir: &Directory) -> Digest {
    let blob = Blob::new(SHA, dir.encode_to_vec());
    cas.write_blobs(std::slice::from_ref(&blob)).unwrap();
    *blob.digest()
}

#[test]
fn golden_directory_digest_matches_python_protobuf() {
    // Expected digests computed with the Python protobuf runtime of the PyPI wheel
    // buildstream==2.8.1 (its remote_execution_pb2), independently of prost:
    //   sub  = Directory(files=[FileNode(name="empty.h", digest=D(b""))])
    //   root = Directory(files=[FileNode("hello.txt", D(b"hello\n")),
    //                           FileNode("run.sh", D(b"hello\n"), is_executable=True)],
    //                    directories=[DirectoryNode("include", D(sub))],
    //                    symlinks=[SymlinkNode("link", "hello.txt")])
    //   hashlib.sha256(root.SerializeToString())
    let hello = SHA.hash_bytes(b"hello\n");
    let sub =
        DirectoryBuilder::new().file("empty.h", &SHA.empty_digest(), false).build(SHA).unwrap();
    let sub = merkle::directory_blob(SHA, &sub);
    assert_eq!(
        sub.digest().to_string(),
        "d7d1450a612a45521d8955bd4209a4d9e06eb918a77083ed2428fbf0378c656a/79"
    );
    // Entries added out of order: the builder sorts.
    let root = DirectoryBuilder::new()
        .symlink("link", "hello.txt")
        .file("run.sh", &hello, true)
        .directory("include", sub.digest())
        .file("hello.txt", &hello, false)
        .build(SHA)
        .unwrap();
    assert_eq!(
        merkle::directory_blob(SHA, &root).digest().to_string(),
        "66958c68bca9f84a1a06024d1273cc7878ed1cff31f4b0943299466e56a50d45/265"
    );
}

fn file(name: &str) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(SHA.hash_bytes(name.as_bytes()).to_proto()),
        ..Default::default()
    }
}

fn dir_node(name: &str) -> DirectoryNode {
    DirectoryNode { name: name.into(), digest: Some(SHA.empty_digest().to_proto()) }
}

fn check_invalid(directory: Directory, reason: &str) {
    let blob = Blob::new(SHA, directory.encode_to_vec());
    let err =
        merkle::decode_directory(blob.digest(), blob.data(), &TreeLimits::default()).unwrap_err();
    assert!(
        matches!(err, CasError::InvalidDirectory { digest, .. } if digest == *blob.digest()),
        "{err}"
    );
    assert!(err.to_string().contains(reason), "expected {reason:?} in {err}");
}

#[test]
fn rejects_directory_with_unsafe_or_non_canonical_names() {
    let files = |names: &[&str]| Directory {
        files: names.iter().map(|n| file(n)).collect(),
        ..Default::default()
    };
    check_invalid(files(&[".."]), "file name \"..\" is not allowed");
    check_invalid(files(&["."]), "file name \".\" is not allowed");
    check_invalid(files(&[""]), "file empty name");
    check_invalid(files(&["a/b"]), "file name \"a/b\" contains '/'");
    check_invalid(files(&["/etc"]), "contains '/'");
    check_invalid(files(&["a\0b"]), "contains NUL");
    check_invalid(files(&["b", "a"]), "files not sorted: \"b\" before \"a\"");
    check_invalid(files(&["a", "a"]), "file \"a\" appears twice");
    let dirs = Directory { directories: vec![dir_node("..")], ..Default::default() };
    check_invalid(dirs, "directory name \"..\" is not allowed");
    let clash = Directory {
        files: vec![file("x")],
        directories: vec![dir_node("x")],
        ..Default::default()
    };
    check_invalid(clash, "name \"x\" is used by two kinds of entry");
    let link = Directory {
        symlinks: vec![SymlinkNode {
            name: "l".into(),
            target: String::new(),
            ..Default::default()
        }],
        ..Default::default()
    };
    check_invalid(link, "symlink \"l\" has an empty or NUL target");
    let mut bad_digest = file("f");
    bad_digest.digest = Some(sa_proto::reapi::Digest { hash: "XYZ".into(), size_bytes: 1 });
    check_invalid(
        Directory { files: vec![bad_digest], ..Default::default() },
        "file \"f\": invalid digest",
    );
    let mut no_digest = file("f");
    no_digest.digest = None;
    check_invalid(
        Directory { files: vec![no_digest], ..Default::default() },
        "missing field FileNode.digest",
    );
}

#[test]
fn rejects_corrupt_directory_proto_naming_the_digest() {
    let cas = MemoryCas::new(SHA);
    let garbage = cas.write_blob(bytes::Bytes::from_static(&[0x0a, 0xff, 0xff])).unwrap();
    let err = merkle::fetch_tree(&cas, &garbage, &TreeLimits::default()).unwrap_err();
    assert!(err.to_string().contains(&format!("Directory {garbage} (a root)")), "{err}");
    assert!(
        matches!(err.root_cause(), CasError::Decode { what: "Directory", digest, .. } if *digest == garbage)
    );
}

#[test]
fn missing_subdirectory_is_named_with_its_path() {
    let cas = MemoryCas::new(SHA);
    let absent = SHA.hash_bytes(b"not stored");
    let inner = DirectoryBuilder::new().directory("gone", &absent).build(SHA).unwrap();
    let inner = put_dir(&cas, &inner);
    let root = put_dir(&cas, &DirectoryBuilder::new().directory("src", &inner).build(SHA).unwrap());
    let err = merkle::fetch_tree(&cas, &root, &TreeLimits::default()).unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.to_string(), format!("Directory {absent} at src/gone/ below root {root}"));
}

#[test]
fn depth_and_entry_limits_are_errors() {
    let cas = MemoryCas::new(SHA);
    let mut digest = put_dir(&cas, &Directory::default());
    for _ in 0..10 {
        digest =
            put_dir(&cas, &DirectoryBuilder::new().directory("d", &digest).build(SHA).unwrap());
    }
    let limits = TreeLimits { max_depth: 5, ..Default::default() };
    let err = merkle::fetch_tree(&cas, &digest, &limits).unwrap_err();
    assert!(
        matches!(err, CasError::LimitExceeded(ref m) if m.contains("deeper than 5 levels")),
        "{err}"
    );
    assert_eq!(merkle::fetch_tree(&cas, &digest, &TreeLimits::default()).unwrap().len(), 11);
    let wide = Directory {
        files: (0..20).map(|i| file(&format!("f{i:02}"))).collect(),
        ..Default::default()
    };
    let wide = put_dir(&cas, &wide);
    let limits = TreeLimits { max_entries: 10, ..Default::default() };
    let err = merkle::fetch_tree(&cas, &wide, &limits).unwrap_err();
    assert!(
        matches!(err.root_cause(), CasError::LimitExceeded(m) if m.contains("20 entries")),
        "{err}"
    );
}

#[test]
fn shared_subtrees_are_fetched_once() {
    let cas = MemoryCas::new(SHA);
    let leaf = put_dir(&cas, &Directory { files: vec![file("x.h")], ..Default::default() });
    let a = put_dir(&cas, &DirectoryBuilder::new().directory("inc", &leaf).build(SHA).unwrap());
    let b = put_dir(
        &cas,
        &DirectoryBuilder::new()
            .directory("inc", &leaf)
            .directory("more", &leaf)
            .build(SHA)
            .unwrap(),
    );
    let forest = merkle::fetch_forest(&cas, &[a, b, a], &TreeLimits::default()).unwrap();
    assert_eq!(forest.len(), 3);
    assert_eq!(forest.files(&b).unwrap().len(), 2);
}

fn tree_with_link(target: &str) -> (MemoryCas, Digest) {
    let cas = MemoryCas::new(SHA);
    let sub = put_dir(&cas, &DirectoryBuilder::new().symlink("l", target).build(SHA).unwrap());
    let root = put_dir(&cas, &DirectoryBuilder::new().directory("sub", &sub).build(SHA).unwrap());
    (cas, root)
}

#[test]
fn materialize_refuses_escaping_and_absolute_symlinks_unless_allowed() {
    for (target, allowed) in [
        ("../x", true),
        ("./a/../../x", true),
        ("../../x", false),
        ("a/../../../x", false),
        ("/etc/passwd", false),
    ] {
        let (cas, root) = tree_with_link(target);
        let out = tempfile::tempdir().unwrap();
        let result =
            merkle::materialize(&cas, &root, &out.path().join("t"), &MaterializeOptions::default());
        if allowed {
            result.unwrap();
        } else {
            let err = result.unwrap_err();
            assert!(matches!(err, CasError::UnsafePath { .. }), "{target}: {err}");
            assert!(err.to_string().contains("sub/l"), "names the path: {err}");
        }
    }
    let (cas, root) = tree_with_link("/usr/bin");
    let out = tempfile::tempdir().unwrap();
    let options = MaterializeOptions { allow_absolute_symlinks: true, ..Default::default() };
    merkle::materialize(&cas, &root, &out.path().join("t"), &options).unwrap();
    let (cas, root) = tree_with_link("../../up");
    let options = MaterializeOptions { allow_escaping_symlinks: true, ..Default::default() };
    merkle::materialize(&cas, &root, &out.path().join("u"), &options).unwrap();
}

#[test]
fn materialize_refuses_a_non_empty_target() {
    let cas = MemoryCas::new(SHA);
    let root = put_dir(&cas, &Directory::default());
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("existing"), b"x").unwrap();
    let err =
        merkle::materialize(&cas, &root, out.path(), &MaterializeOptions::default()).unwrap_err();
    assert!(err.to_string().contains("materialize target is not empty"), "{err}");
}

#[test]
fn ingest_rejects_special_files_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let err = merkle::ingest(&MemoryCas::new(SHA), dir.path(), &TreeLimits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("unsafe path {}: not a regular file, directory or symlink", fifo.display())
    );
}

#[test]
fn batch_ranges_respect_bytes_and_put_large_items_alone() {
    let ranges = merkle::batch_ranges([10, 10, 1000, 10].into_iter(), 250);
    assert_eq!(ranges, vec![0..2, 2..3, 3..4]);
    assert!(merkle::batch_ranges(std::iter::empty(), 100).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn built_directories_round_trip_and_validate(
        names in proptest::collection::btree_set("[a-z0-9._-]{1,8}", 0..20),
        split in 0usize..20,
        exec in any::<bool>(),
    ) {
        let names: Vec<String> = names.into_iter().filter(|n| n != "." && n != "..").collect();
        let mut builder = DirectoryBuilder::new();
        for (i, name) in names.iter().enumerate().rev() {
            builder = if i < split {
                builder.file(name, &SHA.hash_bytes(name.as_bytes()), exec)
            } else {
                builder.directory(name, &SHA.empty_digest())
            };
        }
        let dir = builder.build(SHA).unwrap();
        let blob = merkle::directory_blob(SHA, &dir);
        let decoded = merkle::decode_directory(blob.digest(), blob.data(), &TreeLimits::default()).unwrap();
        prop_assert_eq!(&decoded, &dir);
        prop_assert_eq!(*merkle::directory_blob(SHA, &decoded).digest(), *blob.digest());
    }
}

#[test]
fn build_tree_agrees_with_ingest_and_refuses_bad_paths() {
    let cas = MemoryCas::new(SHA);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src/include")).unwrap();
    std::fs::write(dir.path().join("src/main.c"), "int main;\n").unwrap();
    std::fs::write(dir.path().join("src/include/a.h"), "").unwrap();
    std::fs::write(dir.path().join("top.txt"), "top\n").unwrap();
    let ingested = merkle::ingest(&cas, dir.path(), &TreeLimits::default()).unwrap();
    let files = |list: &[(&str, &[u8])]| -> Vec<merkle::TreeFile> {
        list.iter().map(|(p, c)| merkle::TreeFile::new(*p, SHA.hash_bytes(c), false)).collect()
    };
    let built = merkle::build_tree(
        &cas,
        &files(&[("top.txt", b"top\n"), ("src/main.c", b"int main;\n"), ("src/include/a.h", b"")]),
    )
    .unwrap();
    assert_eq!(built, ingested);
    for (paths, reason) in [
        (&[("a/../b", &b""[..])][..], "unsafe path a/../b: name \"..\" is not allowed"),
        (&[("/abs", &b""[..])][..], "unsafe path /abs: "),
        (&[("a", &b""[..]), ("a", &b"x"[..])][..], "unsafe path a: the path is given twice"),
        (&[("a", &b""[..]), ("a/b", &b""[..])][..], "a"),
    ] {
        let err = merkle::build_tree(&cas, &files(paths)).unwrap_err();
        assert!(err.to_string().contains(reason), "{paths:?}: {err}");
    }
}

#[test]
fn an_ingest_cache_skips_unchanged_files_and_never_hides_a_change() {
    use std::time::{Duration, SystemTime};
    let cas = MemoryCas::new(DigestFunction::Sha256);
    let dir = tempfile::tempdir().unwrap();
    let limits = TreeLimits::default();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    // Files written "long ago" (times set 10 s back) are remembered; a fresh one is not.
    let old = SystemTime::now() - Duration::from_secs(10);
    for name in ["src/a.c", "src/b.c"] {
        std::fs::write(dir.path().join(name), name).unwrap();
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(name))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    std::fs::write(dir.path().join("fresh.h"), "1").unwrap();
    let top = sa_cas::ConfinedDir::open(dir.path()).unwrap();
    let cache = merkle::IngestCache::default();
    let first = merkle::ingest_cached(&cas, &top, &limits, &cache).unwrap();
    assert_eq!(
        first,
        merkle::ingest(&cas, dir.path(), &limits).unwrap(),
        "the same tree as ingest"
    );
    assert_eq!(cache.hits(), 0);
    assert_eq!(merkle::ingest_cached(&cas, &top, &limits, &cache).unwrap(), first);
    assert_eq!(cache.hits(), 2, "a.c and b.c read once; fresh.h (just written) hashed again");
    // A change of content with the same size and times put back is still seen (ctime moves).
    let a = dir.path().join("src/a.c");
    std::fs::write(&a, "SRC/A.C").unwrap();
    std::fs::File::options().write(true).open(&a).unwrap().set_modified(old).unwrap();
    let changed = merkle::ingest_cached(&cas, &top, &limits, &cache).unwrap();
    assert_ne!(changed, first);
    assert_eq!(changed, merkle::ingest(&cas, dir.path(), &limits).unwrap());
}
