//! Trees and directories an attacker builds by hand: symlink chains that escape only once
//! resolved, Merkle DAG bombs, and symlinks planted where `sa` writes.

use prost::Message;
use sa_cas::merkle::{self, DirectoryBuilder, MaterializeOptions, TreeLimits};
use sa_cas::{Blob, Cas, CasError, ConfinedDir, Digest, DigestFunction, MemoryCas, Missing};
use sa_proto::reapi::{Directory, DirectoryNode, FileNode};

const SHA: DigestFunction = DigestFunction::Sha256;

fn put(cas: &MemoryCas, dir: &Directory) -> Digest {
    let blob = Blob::new(SHA, dir.encode_to_vec());
    cas.write_blobs(std::slice::from_ref(&blob)).unwrap();
    *blob.digest()
}

/// `d/x -> ..`, `z -> d/x/../..`, `w1 -> z/..`, …, `w30 -> w29/..`: every target passes a
/// lexical check, yet `z` resolves to the root's parent and `w30` to `/`.
fn symlink_chain(
    cas: &MemoryCas,
    extra: impl FnOnce(DirectoryBuilder) -> DirectoryBuilder,
) -> Digest {
    let d = put(cas, &DirectoryBuilder::new().symlink("x", "..").build(SHA).unwrap());
    let mut root = DirectoryBuilder::new().directory("d", &d).symlink("z", "d/x/../..");
    root = root.symlink("w1", "z/..");
    for i in 2..=30 {
        root = root.symlink(&format!("w{i}"), &format!("w{}/..", i - 1));
    }
    put(cas, &extra(root).build(SHA).unwrap())
}

/// 41 Directory blobs: level i holds `a/` and `b/`, both level i-1; level 0 holds `leaf`.
/// 2^40 paths.
fn dag_bomb(cas: &MemoryCas) -> Digest {
    let leaf = cas.write_blob("leaf\n".into()).unwrap();
    let mut level =
        put(cas, &DirectoryBuilder::new().file("leaf", &leaf, false).build(SHA).unwrap());
    for _ in 0..40 {
        level = put(
            cas,
            &DirectoryBuilder::new()
                .directory("a", &level)
                .directory("b", &level)
                .build(SHA)
                .unwrap(),
        );
    }
    level
}

fn only_entry(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_symlink_chain_that_escapes_once_resolved_is_refused() {
    let cas = MemoryCas::new(SHA);
    let root = symlink_chain(&cas, |b| b);
    let out = tempfile::tempdir().unwrap();
    let err =
        merkle::materialize(&cas, &root, &out.path().join("t"), &MaterializeOptions::default())
            .unwrap_err();
    assert!(matches!(err, CasError::UnsafePath { .. }), "{err}");
    assert!(err.to_string().contains("leads out of the tree"), "{err}");
    assert_eq!(only_entry(out.path()), ["t"], "nothing is made beside the target");
    // Each link of the chain alone: `z` escapes, `d/x -> ..` (the root itself) does not.
    let z = put(
        &cas,
        &DirectoryBuilder::new()
            .directory(
                "d",
                &put(&cas, &DirectoryBuilder::new().symlink("x", "..").build(SHA).unwrap()),
            )
            .symlink("z", "d/x/../..")
            .build(SHA)
            .unwrap(),
    );
    let err = merkle::materialize(&cas, &z, &out.path().join("z"), &MaterializeOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("/z:") || err.to_string().contains("z: "), "names z: {err}");
    let fine = put(
        &cas,
        &DirectoryBuilder::new()
            .directory(
                "d",
                &put(&cas, &DirectoryBuilder::new().symlink("x", "..").build(SHA).unwrap()),
            )
            .symlink("y", "d/x/d")
            .build(SHA)
            .unwrap(),
    );
    merkle::materialize(&cas, &fine, &out.path().join("fine"), &MaterializeOptions::default())
        .unwrap();
    assert_eq!(std::fs::read_link(out.path().join("fine/d/x")).unwrap().to_str(), Some(".."));
}

#[test]
fn symlink_loops_and_absolute_targets_in_chains_are_refused() {
    let cas = MemoryCas::new(SHA);
    let out = tempfile::tempdir().unwrap();
    for (links, expected) in [
        (vec![("a", "b/c"), ("b", "a/..")], "needs more than 40 symlinks"),
        (vec![("a", "b/x"), ("b", "/etc")], "is absolute"),
    ] {
        let mut builder = DirectoryBuilder::new();
        for (name, target) in &links {
            builder = builder.symlink(name, target);
        }
        let root = put(&cas, &builder.build(SHA).unwrap());
        let target = out.path().join(links[0].0);
        let err =
            merkle::materialize(&cas, &root, &target, &MaterializeOptions::default()).unwrap_err();
        assert!(err.to_string().contains(expected), "{links:?}: {err}");
    }
}

#[test]
fn a_dag_bomb_is_refused_on_its_counts_before_any_walk() {
    let cas = MemoryCas::new(SHA);
    let bomb = dag_bomb(&cas);
    let err = merkle::fetch_tree(&cas, &bomb, &TreeLimits::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("tree {bomb} expands to")), "{text}");
    assert!(text.contains("expanded-entries limit of 100000000"), "{text}");
    let out = tempfile::tempdir().unwrap();
    let err =
        merkle::materialize(&cas, &bomb, &out.path().join("t"), &MaterializeOptions::default())
            .unwrap_err();
    assert!(err.to_string().contains("expanded-entries limit"), "{err}");
    assert!(!out.path().join("t").exists(), "nothing is materialized");
    // Raised far enough, the counts are exact: 2^41 - 2 directories and 2^40 files below.
    let limits = TreeLimits { max_expanded_entries: u64::MAX, ..Default::default() };
    let forest = merkle::fetch_tree(&cas, &bomb, &limits).unwrap();
    assert_eq!(forest.len(), 41);
    assert_eq!(forest.expansion(&bomb).entries, (1u64 << 41) - 2 + (1u64 << 40));
    assert_eq!(forest.expansion(&bomb).bytes, 5 << 40);
}

#[test]
fn expansion_counts_equal_what_a_walk_lists() {
    let cas = MemoryCas::new(SHA);
    let f = cas.write_blob("abc".into()).unwrap();
    let leaf = put(
        &cas,
        &DirectoryBuilder::new().file("x", &f, false).symlink("l", "x").build(SHA).unwrap(),
    );
    let mid = put(
        &cas,
        &DirectoryBuilder::new()
            .directory("p", &leaf)
            .directory("q", &leaf)
            .file("y", &f, true)
            .build(SHA)
            .unwrap(),
    );
    let root = put(
        &cas,
        &DirectoryBuilder::new().directory("m", &mid).directory("n", &leaf).build(SHA).unwrap(),
    );
    let forest = merkle::fetch_tree(&cas, &root, &TreeLimits::default()).unwrap();
    let files = forest.files(&root).unwrap();
    // m, n, m/p, m/q; files: m/y, m/p/x, m/q/x, n/x; symlinks: m/p/l, m/q/l, n/l.
    assert_eq!(files.len(), 4);
    assert_eq!(forest.expansion(&root).entries, 4 + 4 + 3);
    assert_eq!(forest.expansion(&root).bytes, 4 * 3);
    let limits = TreeLimits { max_expanded_entries: 10, ..Default::default() };
    assert!(merkle::fetch_tree(&cas, &root, &limits).is_err());
}

#[test]
fn materialize_bounds_the_bytes_it_writes() {
    let cas = MemoryCas::new(SHA);
    let big = cas.write_blob(vec![1u8; 1000].into()).unwrap();
    let root = put(
        &cas,
        &DirectoryBuilder::new().file("a", &big, false).file("b", &big, false).build(SHA).unwrap(),
    );
    let out = tempfile::tempdir().unwrap();
    let options = MaterializeOptions { max_bytes: 1999, ..Default::default() };
    let err = merkle::materialize(&cas, &root, &out.path().join("t"), &options).unwrap_err();
    assert!(
        err.to_string().contains("2000 bytes of files, more than the materialize limit of 1999"),
        "{err}"
    );
}

#[test]
fn confined_walks_never_follow_a_planted_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let top = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), top.path().join("lnk")).unwrap();
    std::fs::write(outside.path().join("victim"), "keep").unwrap();
    let dir = ConfinedDir::open(top.path()).unwrap();
    for missing in [Missing::Absent, Missing::Create] {
        let err = dir.walk("lnk/sub", missing).unwrap_err();
        assert!(err.to_string().contains("is a symlink where a directory is needed"), "{err}");
    }
    let err = dir.open_file("lnk").unwrap_err();
    let err = sa_cas::error_chain(&err);
    assert!(err.contains("is a symlink"), "{err}");
    assert!(dir.create_file("lnk", false).is_err(), "creation is exclusive, never through a link");
    dir.remove("lnk").unwrap();
    assert!(!top.path().join("lnk").exists());
    assert_eq!(std::fs::read_to_string(outside.path().join("victim")).unwrap(), "keep");
    assert_eq!(only_entry(outside.path()), ["victim"]);
    // Unsafe segments never reach the file system.
    for bad in ["..", "a/../b", "/etc", "a//b"] {
        assert!(
            matches!(dir.walk(bad, Missing::Create), Err(CasError::UnsafePath { .. })),
            "{bad}"
        );
    }
}

#[test]
fn ingest_keeps_symlinks_and_never_reads_through_them() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host file").unwrap();
    let top = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), top.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), top.path().join("s")).unwrap();
    let cas = MemoryCas::new(SHA);
    let root = merkle::ingest(&cas, top.path(), &TreeLimits::default()).unwrap();
    let forest = merkle::fetch_tree(&cas, &root, &TreeLimits::default()).unwrap();
    assert!(forest.files(&root).unwrap().is_empty());
    assert_eq!(forest.get(&root).unwrap().symlinks.len(), 2);
    let secret = SHA.hash_bytes(b"host file");
    assert_eq!(cas.find_missing(&[secret]).unwrap(), vec![secret], "the host file is not stored");
}

#[test]
fn materialize_writes_only_below_its_target_even_for_shared_subtrees() {
    // The same subtree at two places, with a relative link that stays inside at both.
    let cas = MemoryCas::new(SHA);
    let f = cas.write_blob("x".into()).unwrap();
    let sub = put(
        &cas,
        &Directory {
            files: vec![FileNode {
                name: "f".into(),
                digest: Some(f.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let mid = put(
        &cas,
        &Directory {
            directories: vec![DirectoryNode { name: "s".into(), digest: Some(sub.to_proto()) }],
            ..Default::default()
        },
    );
    let root = put(
        &cas,
        &DirectoryBuilder::new()
            .directory("a", &mid)
            .directory("b", &mid)
            .symlink("l", "a/s/f")
            .build(SHA)
            .unwrap(),
    );
    let out = tempfile::tempdir().unwrap();
    merkle::materialize(&cas, &root, &out.path().join("t"), &MaterializeOptions::default())
        .unwrap();
    assert_eq!(std::fs::read_to_string(out.path().join("t/l")).unwrap(), "x");
    assert_eq!(std::fs::read_to_string(out.path().join("t/b/s/f")).unwrap(), "x");
}

/// A store's `digest-function` file is read without following a symlink and at most 64 bytes of
/// it: a planted symlink, a huge file or garbage is an error naming the store, never a read
/// elsewhere or into memory without bound.
#[test]
fn a_hostile_digest_function_file_is_refused_not_followed_or_read_whole() {
    use sa_cas::{LocalCas, LocalCasConfig};
    let config = LocalCasConfig::default();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "sha256\n").unwrap();
    let store = tempfile::tempdir().unwrap();
    LocalCas::open(store.path(), config).unwrap();
    let marker = store.path().join("digest-function");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "sha256\n", "a new store is marked");

    std::fs::remove_file(&marker).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), &marker).unwrap();
    let err = LocalCas::open(store.path(), config).unwrap_err();
    let err = sa_cas::error_chain(&err);
    assert!(err.contains("is a symlink"), "{err}");

    std::fs::remove_file(&marker).unwrap();
    std::fs::write(&marker, "x".repeat(10 << 20)).unwrap();
    let err = sa_cas::error_chain(&LocalCas::open(store.path(), config).unwrap_err());
    assert!(err.contains("is not a digest function"), "{err}");
    assert!(err.len() < 400, "at most 64 bytes of the file are read and quoted: {err}");

    std::fs::write(&marker, "md5\n").unwrap();
    let err = sa_cas::error_chain(&LocalCas::open(store.path(), config).unwrap_err());
    assert!(err.contains("\"md5\" is not a digest function"), "{err}");
}
