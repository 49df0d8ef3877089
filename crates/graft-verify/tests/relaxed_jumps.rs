//! Run-pre matching across the two ways a jump between two functions of one
//! file is assembled: graft's object (`-ffunction-sections`) holds a 5-byte
//! jump with a relocation, the target's build (no function sections) a jump
//! the assembler resolved itself, in 2 bytes when the target is near.
//!
//! `tests/fixtures/jumps.c` is compiled at test time both ways. The target's
//! object is linked into an executable that stands in for the kernel: graft
//! reads a vmlinux-like ELF as its image and its symbol table as kallsyms. It
//! also stands in, unlinked, for a module `.ko`.

use std::path::{Path, PathBuf};
use std::process::Command;

use graft_elf::{Object, SymbolId};
use graft_target::{KernelImage, ModuleFile, SymbolTable};
use graft_verify::{Target, Verified, VerifyError};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};

const FLAGS: &[&str] = &[
    "-O2",
    "-fno-pie",
    "-fno-pic",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-stack-protector",
    // helper and other are the same code: keep both.
    "-fno-ipa-icf",
    // Source order, so that near_caller is near helper and far_caller is not.
    "-fno-toplevel-reorder",
    // As the kernel: no padding inside functions.
    "-falign-jumps=1",
    "-falign-loops=1",
];

struct Built {
    _dir: tempfile::TempDir,
    /// graft's build of the original source.
    ours: Object,
    /// The target's build, linked.
    linked: PathBuf,
    /// The target's build, unlinked.
    relocatable: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ours always jumps to helper; the target's build jumps to `target`.
fn build(target: &str) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jumps.c");
    let ours = dir.path().join("ours.o");
    let relocatable = dir.path().join("theirs.o");
    let linked = dir.path().join("theirs");
    run(Command::new("gcc")
        .args(FLAGS)
        .args(["-ffunction-sections", "-c", "-o"])
        .arg(&ours)
        .arg(&src));
    run(Command::new("gcc")
        .args(FLAGS)
        .arg(format!("-DTARGET={target}"))
        .args(["-c", "-o"])
        .arg(&relocatable)
        .arg(&src));
    run(Command::new("ld")
        .args(["-e", "0", "-o"])
        .arg(&linked)
        .arg(&relocatable));
    Built {
        ours: Object::read(&ours).unwrap(),
        linked,
        relocatable,
        _dir: dir,
    }
}

fn id(obj: &Object, name: &str) -> SymbolId {
    obj.functions()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .id
}

fn verify_linked(b: &Built, functions: &[&str]) -> Result<Verified, VerifyError> {
    verify_image(b, &b.linked, functions)
}

fn verify_image(b: &Built, image: &Path, functions: &[&str]) -> Result<Verified, VerifyError> {
    let symbols = SymbolTable::read(&b.linked).unwrap();
    let image = KernelImage::read(image).unwrap();
    let ids: Vec<SymbolId> = functions.iter().map(|f| id(&b.ours, f)).collect();
    graft_verify::verify(
        &b.ours,
        &ids,
        &Target {
            symbols: &symbols,
            image: &image,
            object: "vmlinux",
        },
    )
}

fn address(b: &Built, name: &str) -> u64 {
    SymbolTable::read(&b.linked)
        .unwrap()
        .lookup("vmlinux", name)[0]
        .address
}

/// The decoded instructions of the target's copy of `name`.
fn theirs(b: &Built, name: &str) -> Vec<Instruction> {
    let image = KernelImage::read(&b.linked).unwrap();
    let at = address(b, name);
    let size = id(&b.ours, name);
    let len = b.ours.symbol(size).size as usize;
    let bytes = image.bytes_upto(at, len).unwrap();
    Decoder::with_ip(64, bytes, at, DecoderOptions::NONE)
        .into_iter()
        .collect()
}

fn ours(b: &Built, name: &str) -> Vec<Instruction> {
    let s = b.ours.symbol(id(&b.ours, name));
    let data = &b.ours.section(s.section.unwrap()).data;
    Decoder::with_ip(
        64,
        &data[s.value as usize..(s.value + s.size) as usize],
        0,
        DecoderOptions::NONE,
    )
    .into_iter()
    .collect()
}

fn jmp(insns: &[Instruction]) -> Instruction {
    *insns
        .iter()
        .find(|i| i.mnemonic() == Mnemonic::Jmp)
        .expect("a tail call")
}

#[test]
fn short_and_near_jumps_reaching_the_same_function_match() {
    let b = build("helper");
    let helper = address(&b, "helper");
    // The premises: a 2-byte jump to helper where ours has 5 bytes and a
    // relocation; a 5-byte jump resolved in place; a branch over the short
    // jump whose displacement moved with it.
    let near = jmp(&theirs(&b, "near_caller"));
    assert_eq!((near.len(), near.near_branch_target()), (2, helper));
    let far = jmp(&theirs(&b, "far_caller"));
    assert_eq!((far.len(), far.near_branch_target()), (5, helper));
    for f in ["near_caller", "far_caller"] {
        let j = jmp(&ours(&b, f));
        let s = b.ours.symbol(id(&b.ours, f));
        let relocs = b
            .ours
            .section(s.section.unwrap())
            .relocs_in(j.ip() + 1, j.next_ip());
        assert_eq!((j.len(), relocs.len()), (5, 1), "{f}");
    }
    let (o, t) = (ours(&b, "near_caller"), theirs(&b, "near_caller"));
    assert_eq!(o[1].mnemonic(), Mnemonic::Jle);
    assert_eq!(t[1].mnemonic(), Mnemonic::Jle);
    assert_ne!(
        o[1].near_branch_target() - o[1].ip(),
        t[1].near_branch_target() - t[1].ip(),
        "the branch over the short jump moved"
    );

    let v = verify_linked(&b, &["near_caller", "far_caller"]).unwrap();
    let found: Vec<(&str, u64, u32)> = v
        .functions
        .iter()
        .map(|m| (m.function.as_str(), m.address, m.sympos))
        .collect();
    assert_eq!(
        found,
        vec![
            ("near_caller", address(&b, "near_caller"), 0),
            ("far_caller", address(&b, "far_caller"), 0)
        ]
    );
    // Both jumps proved what they reach.
    assert_eq!(v.sympos.get("helper"), Some(&0));
    assert!(v.functions.iter().all(|m| m.choice.is_none()));
}

#[test]
fn a_jump_that_reaches_another_function_is_refused() {
    let b = build("other");
    for (f, offset) in [("near_caller", 8), ("far_caller", 9)] {
        match verify_linked(&b, &[f]) {
            Err(VerifyError::Mismatch {
                function,
                offset: at,
                ours,
                theirs,
                ..
            }) => {
                assert_eq!((function.as_str(), at), (f, offset));
                assert!(
                    ours.starts_with("jmp ") && ours.ends_with("→ helper"),
                    "{ours}"
                );
                assert!(
                    theirs.starts_with("jmp ") && theirs.ends_with("→ other"),
                    "{theirs}"
                );
            }
            other => panic!("{f}: expected a mismatch, got {other:?}"),
        }
    }
}

/// The branch over the tail call, pointed at another instruction of the
/// function in the target's copy: the displacements differ anyway, so only
/// the instruction each reaches can tell.
#[test]
fn a_local_branch_that_reaches_another_instruction_is_refused() {
    let b = build("helper");
    let t = theirs(&b, "near_caller");
    assert_eq!(t[1].mnemonic(), Mnemonic::Jle);
    let mut elf = std::fs::read(&b.linked).unwrap();
    // cmp $0x64,%edi; jle +5; add $1,%edi; jmp helper
    let pattern = [0x83, 0xff, 0x64, 0x7e, 0x05, 0x83, 0xc7, 0x01, 0xeb];
    let at: Vec<usize> = elf
        .windows(pattern.len())
        .enumerate()
        .filter(|(_, w)| *w == pattern)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "near_caller as the test expects it");
    // jle +3: onto the jmp, an instruction boundary, but the wrong one.
    elf[at[0] + 4] = 0x03;
    let changed = b.linked.with_extension("changed");
    std::fs::write(&changed, &elf).unwrap();
    match verify_image(&b, &changed, &["near_caller"]) {
        Err(VerifyError::Mismatch {
            offset,
            ours,
            theirs,
            ..
        }) => {
            assert_eq!(offset, 3);
            assert!(
                ours.starts_with("jle ") && ours.contains("→ near_caller+0x"),
                "{ours}"
            );
            assert!(
                theirs.starts_with("jle ") && theirs.contains("[7e 03]"),
                "{theirs}"
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Unchanged, the same image matches.
    assert!(verify_image(&b, &b.linked, &["near_caller"]).is_ok());
}

/// A module is relocatable, but the assembler resolved the jumps within its
/// `.text` just the same.
#[test]
fn the_same_holds_in_a_module() {
    for (target, ok) in [("helper", true), ("other", false)] {
        let b = build(target);
        let ko = b.relocatable.with_extension("ko");
        std::fs::copy(&b.relocatable, &ko).unwrap();
        let module = ModuleFile::read(&ko).unwrap();
        let ids = [id(&b.ours, "near_caller"), id(&b.ours, "far_caller")];
        let got = graft_verify::verify_module(&b.ours, &ids, &module);
        if ok {
            let v = got.unwrap();
            assert_eq!(v.functions.len(), 2);
            assert_eq!(v.sympos.get("helper"), Some(&0));
        } else {
            match got {
                Err(VerifyError::Mismatch {
                    offset,
                    ours,
                    theirs,
                    ..
                }) => {
                    assert_eq!(offset, 8);
                    assert!(ours.ends_with("→ helper"), "{ours}");
                    assert!(theirs.ends_with("→ other"), "{theirs}");
                }
                other => panic!("expected a mismatch, got {other:?}"),
            }
        }
    }
}
