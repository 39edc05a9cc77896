//! A small reader of kernel BTF, for the one thing we need from it: where fields sit in this
//! kernel's structs, and the names of an enum's values. Rust BPF has no CO-RE relocations, so the
//! loader reads these at start-up and hands them to the kernel programs as globals.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html> (header, type section, string section).
//!
//! Why our own: aya-obj (0.3.0, which aya 0.14 uses, and newer) parses BTF but keeps members,
//! strings and enum values `pub(crate)`; the crates that expose them are unmaintained (`btf`,
//! which also mis-signs 64-bit enum values), a heavy command-line tool (`btfdump`), or LGPL
//! (`btf-rs`), which does not fit this project's MIT OR Apache-2.0. This reader has no
//! dependencies and checks every bound.
//!
//! Over 400 lines with its tests (the last 135): a format reader with its bounds checks, and its
//! tests on truncated and garbage blobs.

use std::{collections::HashMap, path::Path};

/// Where the running kernel publishes its own BTF (`CONFIG_DEBUG_INFO_BTF=y`).
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (detector needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: `{strukt}.{field}` is a bitfield; only byte-aligned fields can be read")]
    Bitfield { strukt: String, field: String },
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

/// BTF kinds (include/uapi/linux/btf.h).
mod kind {
    pub(super) const INT: u32 = 1;
    pub(super) const PTR: u32 = 2;
    pub(super) const ARRAY: u32 = 3;
    pub(super) const STRUCT: u32 = 4;
    pub(super) const UNION: u32 = 5;
    pub(super) const ENUM: u32 = 6;
    pub(super) const FWD: u32 = 7;
    pub(super) const TYPEDEF: u32 = 8;
    pub(super) const VOLATILE: u32 = 9;
    pub(super) const CONST: u32 = 10;
    pub(super) const RESTRICT: u32 = 11;
    pub(super) const FUNC: u32 = 12;
    pub(super) const FUNC_PROTO: u32 = 13;
    pub(super) const VAR: u32 = 14;
    pub(super) const DATASEC: u32 = 15;
    pub(super) const FLOAT: u32 = 16;
    pub(super) const DECL_TAG: u32 = 17;
    pub(super) const TYPE_TAG: u32 = 18;
    pub(super) const ENUM64: u32 = 19;
}

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

enum Type {
    Composite {
        name: u32,
        members: Vec<Member>,
    },
    Enum {
        name: u32,
        values: Vec<(u32, i64)>,
    },
    /// typedef, const, volatile, restrict, type tag: points at another type.
    Alias {
        ty: u32,
    },
    Other,
}

/// Parsed BTF: types by id (id 0 is `void`) and the string section.
pub(crate) struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Malformed("truncated type section"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub(crate) fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a BTF blob in native byte order.
    #[expect(
        clippy::too_many_lines,
        reason = "one match over the BTF kinds reads best in one place"
    )]
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(BtfError::Malformed("shorter than its header"));
        }
        let magic = u16::from_ne_bytes([data[0], data[1]]);
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic (or foreign byte order)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::Malformed("section offset overflows"))?;
            let end = start
                .checked_add(len)
                .ok_or(BtfError::Malformed("section length overflows"))?;
            data.get(start..end)
                .ok_or(BtfError::Malformed("section past the end of the data"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let ty = match kind {
                kind::STRUCT | kind::UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0x00ff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        members.push(Member {
                            name: u32_at(type_data, m)?,
                            ty: u32_at(type_data, m + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    at += vlen * 12;
                    Type::Composite { name, members }
                }
                kind::ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let v = at + i * 8;
                        // Signed or not depends on kind_flag; the enums we read are small.
                        let raw = u32_at(type_data, v + 4)?;
                        let value = if kind_flag {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        values.push((u32_at(type_data, v)?, value));
                    }
                    at += vlen * 8;
                    Type::Enum { name, values }
                }
                kind::ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let v = at + i * 12;
                        let lo = u64::from(u32_at(type_data, v + 4)?);
                        let hi = u64::from(u32_at(type_data, v + 8)?);
                        values.push((u32_at(type_data, v)?, (hi << 32 | lo) as i64));
                    }
                    at += vlen * 12;
                    Type::Enum { name, values }
                }
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    Type::Alias { ty: size_or_type }
                }
                kind::INT | kind::VAR | kind::DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                kind::ARRAY => {
                    at += 12;
                    Type::Other
                }
                kind::FUNC_PROTO => {
                    at += vlen * 8;
                    Type::Other
                }
                kind::DATASEC => {
                    at += vlen * 12;
                    Type::Other
                }
                kind::PTR | kind::FWD | kind::FUNC | kind::FLOAT => Type::Other,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
        }
        if at != type_data.len() {
            return Err(BtfError::Malformed("type section ends inside a type"));
        }
        let mut btf = Self {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name, members } = ty
                && *name != 0
                && !members.is_empty()
            {
                let name = btf.string(*name).to_owned();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        // Alias chains are short; the bound only protects against a malformed loop.
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias { ty } => id = *ty,
                ty => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `field` in `struct strukt`, looking through anonymous structs and unions
    /// (task_struct and kernel_siginfo keep fields in those).
    pub(crate) fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let no_field = || BtfError::NoField {
            strukt: strukt.to_owned(),
            field: field.to_owned(),
        };
        let (bits, bitfield) = self.find_member(id, field, 0).ok_or_else(no_field)?;
        if bitfield != 0 || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    fn find_member(&self, id: u32, field: &str, depth: u32) -> Option<(u32, u32)> {
        let Some(Type::Composite { members, .. }) = self.resolve(id) else {
            return None;
        };
        for member in members {
            if member.name == 0 {
                if depth < 8
                    && let Some((bits, size)) = self.find_member(member.ty, field, depth + 1)
                {
                    return Some((member.bit_offset + bits, size));
                }
            } else if self.string(member.name) == field {
                return Some((member.bit_offset, member.bitfield_size));
            }
        }
        None
    }

    /// The values of `enum name`, as (enumerator, value).
    #[must_use]
    pub(crate) fn enum_values(&self, name: &str) -> Vec<(String, i64)> {
        self.types
            .iter()
            .find_map(|ty| match ty {
                Type::Enum { name: n, values } if self.string(*n) == name => Some(
                    values
                        .iter()
                        .map(|(v, value)| (self.string(*v).to_owned(), *value))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob by hand: `struct outer { int a; union { int b; char c; }; int d:3; }`
    /// and `enum colour { RED = 0, BLUE = 7 }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0colour\0RED\0BLUE\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string")
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_ne_bytes());
            }
        };
        // 1: int
        push(&[s("int"), kind::INT << 24, 4, 32]);
        // 2: anonymous union { int b; int c; }
        push(&[0, kind::UNION << 24 | 2, 4, s("b"), 1, 0, s("c"), 1, 0]);
        // 3: struct outer, kind_flag set so member offsets carry bitfield sizes
        push(&[
            s("outer"),
            1 << 31 | kind::STRUCT << 24 | 3,
            12,
            s("a"),
            1,
            0,
            0,
            2,
            32,
            s("d"),
            1,
            3 << 24 | 64,
        ]);
        // 4: enum colour
        push(&[
            s("colour"),
            kind::ENUM << 24 | 2,
            4,
            s("RED"),
            0,
            s("BLUE"),
            7,
        ]);
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_ne_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [
            HEADER_LEN as u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_ne_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = Btf::parse(&blob()).expect("parse");
        assert_eq!(btf.field_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.field_offset("outer", "c").expect("c"), 4);
        assert!(matches!(
            btf.field_offset("outer", "d"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.field_offset("outer", "zz"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
        assert_eq!(
            btf.enum_values("colour"),
            vec![("RED".to_owned(), 0), ("BLUE".to_owned(), 7)]
        );
    }

    #[test]
    fn rejects_truncated_and_garbage_blobs() {
        let good = blob();
        for len in [0, 3, HEADER_LEN, good.len() - 1] {
            assert!(Btf::parse(&good[..len]).is_err(), "accepted {len} bytes");
        }
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        assert!(Btf::parse(&bad_magic).is_err());
        let mut huge_section = good;
        huge_section[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(Btf::parse(&huge_section).is_err());
    }

    /// The running kernel's BTF, where there is one: the fields the probes need must resolve.
    #[test]
    fn running_kernel_has_the_fields_we_read() {
        let btf = match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(BtfError::Read { .. }) if !Path::new(VMLINUX).exists() => {
                panic!(
                    "{VMLINUX} is missing: this test runs on the project's machines, which have BTF"
                )
            }
            Err(e) => panic!("{e}"),
        };
        for (s, f) in [
            ("task_struct", "tgid"),
            ("task_struct", "comm"),
            ("kernel_siginfo", "si_code"),
        ] {
            btf.field_offset(s, f).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            btf.field_offset("kernel_siginfo", "si_code")
                .expect("si_code"),
            8
        );
        assert!(
            btf.enum_values("cgroup_subsys_id")
                .iter()
                .any(|(n, _)| n == "memory_cgrp_id")
        );
    }
}
