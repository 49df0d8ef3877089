//! Writes the patch object: the carried sections, the cut-down special
//! sections, their symbols and relocations, as a relocatable ELF that kbuild
//! links with the stub into the module (graft-elf's writer).

use std::collections::HashMap;

use graft_elf::write::{Contents, OutReloc, OutSection, OutSymbol, SectionSpec, Writer};
use graft_elf::{Binding, SectionId, SymKind, SymbolId};

use crate::include::{Plan, Target};
use crate::special::Filtered;
use crate::KlpError;

const SHF_WRITE: u64 = 0x1;
const SHF_ALLOC: u64 = 0x2;
const SHT_PROGBITS: u32 = 1;

/// The patch object's bytes.
pub fn write(plan: &Plan<'_>, specials: &[Filtered]) -> Result<Vec<u8>, KlpError> {
    let mut e = Emitter {
        plan,
        w: Writer::new(),
        out_sec: HashMap::new(),
        sec_sym: HashMap::new(),
        out_sym: HashMap::new(),
        externals: HashMap::new(),
    };
    e.carried_sections();
    e.carried_symbols();
    let mut rela = e.carried_relocations();
    rela.extend(e.special_sections(specials));
    for (target, relocs) in rela {
        e.w.add_relocations(target, &relocs);
    }
    e.w.write().map_err(|err| KlpError::Write(err.to_string()))
}

struct Emitter<'p, 'a> {
    plan: &'p Plan<'a>,
    w: Writer,
    out_sec: HashMap<SectionId, OutSection>,
    sec_sym: HashMap<SectionId, OutSymbol>,
    out_sym: HashMap<SymbolId, OutSymbol>,
    externals: HashMap<String, OutSymbol>,
}

impl Emitter<'_, '_> {
    /// Carried sections, each with its section symbol.
    fn carried_sections(&mut self) {
        let obj = self.plan.patched;
        for &id in &self.plan.sections {
            let s = obj.section(id);
            let contents = if s.is_nobits() {
                Contents::Nobits(s.size)
            } else {
                Contents::Bytes(s.data.clone())
            };
            let o = self.w.add_section(&spec_of(s), contents);
            self.out_sec.insert(id, o);
            let sym = self.w.section_symbol(o);
            self.sec_sym.insert(id, sym);
        }
    }

    /// Named symbols of carried sections, plus the stub's aliases.
    fn carried_symbols(&mut self) {
        let obj = self.plan.patched;
        for s in &obj.symbols {
            let Some(home) = s.section else { continue };
            if !self.plan.sections.contains(&home)
                || matches!(s.kind, SymKind::Section | SymKind::File)
            {
                continue;
            }
            // A function's padding is named by the module link's objtool.
            if graft_diff::prefix::is_padding_symbol(&s.name) && s.kind != SymKind::Func {
                continue;
            }
            // Local in the module: nothing links to carried code by name
            // (the stub uses the aliases), and a local name sorts before the
            // global alias, so stack traces and oopses show the kernel's
            // name. A global the patch adds stays global: another file of
            // the patch may use it.
            let binding = if s.is_global() && self.plan.new_globals.contains(&s.id) {
                Binding::Global
            } else {
                Binding::Local
            };
            let o = self.w.add_symbol(
                &s.name,
                Some(self.out_sec[&home]),
                s.value,
                s.size,
                binding,
                s.kind,
                s.other,
            );
            self.out_sym.insert(s.id, o);
        }
        // With objtool at the module link, the aliases are untyped and
        // sizeless: objtool would take a second function symbol at a
        // function's address for another function.
        let at_link = self.plan.objtool_at_link;
        for (sym, alias) in &self.plan.aliases {
            let s = obj.symbol(*sym);
            self.w.add_symbol(
                alias,
                Some(self.out_sec[&s.section.expect("carried")]),
                s.value,
                if at_link { 0 } else { s.size },
                Binding::Global,
                if at_link {
                    SymKind::NoType
                } else {
                    SymKind::Func
                },
                0,
            );
        }
    }

    /// Relocations of carried sections; one without a target lies in a
    /// piece nothing carried uses.
    fn carried_relocations(&mut self) -> Vec<(OutSection, Vec<OutReloc>)> {
        let obj = self.plan.patched;
        let mut out = Vec::new();
        for &id in &self.plan.sections {
            let mut relocs = Vec::new();
            for r in &obj.section(id).relocs {
                let Some(target) = self.plan.targets.get(&(id, r.offset)) else {
                    continue;
                };
                // With objtool at the module link, a reference the compiler
                // made through a section symbol stays so (a jump to
                // `foo.cold` through its function symbol is a call to it).
                let (symbol, addend) = match target {
                    Target::Symbol(sym, a)
                        if self.plan.objtool_at_link
                            && obj.symbol(r.symbol).kind == SymKind::Section =>
                    {
                        let s = obj.symbol(*sym);
                        let home = s.section.expect("carried symbols are defined");
                        (self.sec_sym[&home], a.wrapping_add(s.value as i64))
                    }
                    _ => self.resolve(target),
                };
                relocs.push(OutReloc {
                    offset: r.offset,
                    r_type: r.r_type,
                    symbol,
                    addend,
                });
            }
            if !relocs.is_empty() {
                out.push((self.out_sec[&id], relocs));
            }
        }
        out
    }

    /// Special sections: their entries point into carried sections only.
    fn special_sections(&mut self, specials: &[Filtered]) -> Vec<(OutSection, Vec<OutReloc>)> {
        let obj = self.plan.patched;
        let mut out = Vec::new();
        for f in specials {
            let s = obj.section(f.source);
            let o = match &f.deferred {
                // Writable data of its own, named for the stub (jumps.rs).
                Some(d) => {
                    let o = self.w.add_section(
                        &SectionSpec {
                            name: crate::jumps::table_section(self.plan.unit),
                            sh_type: SHT_PROGBITS,
                            flags: SHF_ALLOC | SHF_WRITE,
                            align: 8,
                            entsize: 0,
                        },
                        Contents::Bytes(f.data.clone()),
                    );
                    self.w.add_symbol(
                        &d.symbol,
                        Some(o),
                        0,
                        f.data.len() as u64,
                        Binding::Global,
                        SymKind::Object,
                        0,
                    );
                    o
                }
                None => self
                    .w
                    .add_section(&spec_of(s), Contents::Bytes(f.data.clone())),
            };
            let mut relocs = Vec::with_capacity(f.relocs.len());
            for &(offset, orig) in &f.relocs {
                let Some(&r) = s.relocs_in(orig, orig + 1).first() else {
                    continue;
                };
                let Some(target) = self.plan.targets.get(&(f.source, orig)) else {
                    continue;
                };
                let (symbol, addend) = self.resolve(target);
                relocs.push(OutReloc {
                    offset,
                    r_type: r.r_type,
                    symbol,
                    addend,
                });
            }
            if !relocs.is_empty() {
                out.push((o, relocs));
            }
        }
        out
    }

    /// The output symbol and addend of a planned relocation target.
    fn resolve(&mut self, target: &Target) -> (OutSymbol, i64) {
        match target {
            Target::Symbol(sym, addend) => (self.out_sym[sym], *addend),
            Target::Section(sec, addend) => (self.sec_sym[sec], *addend),
            Target::External(name, addend) => {
                let sym = match self.externals.get(name) {
                    Some(&s) => s,
                    None => {
                        let s = self.w.add_undefined(name);
                        self.externals.insert(name.clone(), s);
                        s
                    }
                };
                (sym, *addend)
            }
        }
    }
}

fn spec_of(s: &graft_elf::Section) -> SectionSpec {
    SectionSpec {
        name: s.name.clone(),
        sh_type: s.sh_type,
        flags: s.flags,
        align: s.align,
        entsize: s.entsize,
    }
}
