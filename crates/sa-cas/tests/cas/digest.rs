//! Digest parsing, printing and hashing.

use sa_cas::{CasError, Digest, DigestFunction};

fn parse_err(text: &str) -> String {
    match Digest::parse(DigestFunction::Sha256, text) {
        Ok(d) => panic!("{text:?} parsed as {d}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn parses_and_prints_hash_slash_size() {
    let text = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03/6";
    let digest = Digest::parse(DigestFunction::Sha256, text).unwrap();
    assert_eq!(digest.to_string(), text);
    assert_eq!(digest.size(), 6);
    // The empty blob's size is written "0": one text per digest.
    let empty = DigestFunction::Sha256.hash_bytes(b"").to_string();
    assert_eq!(Digest::parse(DigestFunction::Sha256, &empty).unwrap().to_string(), empty);
    assert_eq!(digest, DigestFunction::Sha256.hash_bytes(b"hello\n"));
}

#[test]
fn rejects_malformed_digests_naming_the_problem() {
    let hash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    for (text, reason) in [
        (hash.to_owned(), "expected <hash>/<size>"),
        (format!("{hash}/"), "size is not a decimal number"),
        (format!("{hash}/-1"), "size is not a decimal number"),
        (format!("{hash}/+6"), "size is not a decimal number"),
        (format!("{hash}/06"), "size has a leading zero"),
        (format!("{hash}/0141"), "size has a leading zero"),
        (format!("{hash}/9223372036854775808"), "size does not fit in int64"),
        (format!("{hash}/99999999999999999999999"), "size does not fit in int64"),
        (format!("{}/6", &hash[1..]), "hash has 63 characters, sha256 needs 64"),
        (format!("{}/6", hash.to_uppercase()), "hash is not lower-case hex"),
        (format!("{}g/6", &hash[1..]), "hash is not lower-case hex"),
    ] {
        let err = parse_err(&text);
        assert!(err.contains(reason), "{text:?}: {err}");
        assert!(err.contains(&format!("{text:?}")), "error names the input: {err}");
    }
}

#[test]
fn rejects_negative_proto_size() {
    let proto = sa_proto::reapi::Digest { hash: "ab".repeat(32), size_bytes: -5 };
    let err = Digest::from_proto(DigestFunction::Sha256, &proto).unwrap_err();
    assert!(
        matches!(err, CasError::InvalidDigest { ref reason, .. } if reason == "size is negative")
    );
}

#[test]
fn known_vectors_for_both_functions() {
    // sha256sum and b3sum of the empty input and of "abc".
    let check = |f: DigestFunction, data: &[u8], hex: &str| {
        assert_eq!(f.hash_bytes(data).hash_hex(), hex, "{f} of {data:?}");
    };
    check(
        DigestFunction::Sha256,
        b"",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    );
    check(
        DigestFunction::Sha256,
        b"abc",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    check(
        DigestFunction::Blake3,
        b"",
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    );
    check(
        DigestFunction::Blake3,
        b"abc",
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
    );
}

#[test]
fn hashes_readers_and_large_files_like_bytes() {
    let data = super::content(7, (5 << 20) + 123);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::write(&path, &data).unwrap();
    for f in DigestFunction::ALL {
        let expected = f.hash_bytes(&data);
        assert_eq!(f.hash_reader(&data[..]).unwrap(), expected);
        assert_eq!(f.hash_file(&path).unwrap(), expected, "{f}");
    }
}

#[test]
fn digests_of_different_functions_never_compare_equal() {
    let sha = DigestFunction::Sha256.hash_bytes(b"x");
    let b3 = Digest::new(DigestFunction::Blake3, *sha.hash(), sha.size()).unwrap();
    assert_ne!(sha, b3);
    assert_eq!(sha.to_string(), b3.to_string(), "the text form carries no function");
}

#[test]
fn digest_function_names_and_proto_values() {
    for f in DigestFunction::ALL {
        assert_eq!(f.name().parse::<DigestFunction>().unwrap(), f);
        assert_eq!(DigestFunction::from_proto(f.to_proto() as i32).unwrap(), f);
    }
    assert_eq!(DigestFunction::Blake3.to_proto() as i32, 9);
    assert!("md5".parse::<DigestFunction>().is_err());
    let err = DigestFunction::from_proto(3).unwrap_err().to_string();
    assert_eq!(err, "unsupported digest function MD5");
}
