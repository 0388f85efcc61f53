//! Finite-field Diffie-Hellman over the RFC 7919 groups ffdhe2048 to ffdhe8192, as
//! DH-HMAC-CHAP uses them (Base 2.0 8.13.5.1, generator 2).
//!
//! The arithmetic is `crypto-bigint`'s: heap-sized integers (the group is chosen at run
//! time) with constant-time Montgomery exponentiation, so the private exponent does not
//! leak through timing (`num-bigint`'s `modpow` makes no such promise).

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use nvme_spec::auth::dh_group;
use thiserror::Error;

/// Bits of the private exponent: over twice the strongest group's security strength
/// (ffdhe8192, about 200 bits; RFC 7919 section 5.2).
const EXPONENT_BITS: u32 = 512;

/// Why a Diffie-Hellman step failed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DhError {
    /// The peer's value has the wrong length or is outside 2..p-2.
    #[error("the peer's DH value is not an element of the group")]
    BadPublic,
    /// The system's random source failed.
    #[error("no random numbers")]
    Random,
}

/// An RFC 7919 group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// DH group identifier on the wire.
    pub id: u8,
    /// Prime length in bits.
    pub bits: u32,
    prime: &'static str,
}

/// The groups, by identifier.
const GROUPS: [Group; 5] = [
    Group {
        id: dh_group::FFDHE2048,
        bits: 2048,
        prime: FFDHE2048,
    },
    Group {
        id: dh_group::FFDHE3072,
        bits: 3072,
        prime: FFDHE3072,
    },
    Group {
        id: dh_group::FFDHE4096,
        bits: 4096,
        prime: FFDHE4096,
    },
    Group {
        id: dh_group::FFDHE6144,
        bits: 6144,
        prime: FFDHE6144,
    },
    Group {
        id: dh_group::FFDHE8192,
        bits: 8192,
        prime: FFDHE8192,
    },
];

/// One side's ephemeral key: the private exponent and the public value g^x mod p.
pub struct KeyPair {
    group: Group,
    private: BoxedUint,
    /// The public value, big-endian, exactly the prime's length.
    pub public: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair(ffdhe{}, private redacted)", self.group.bits)
    }
}

impl Group {
    /// The group for a DH group identifier (`None` for the null group or an unknown one).
    pub fn from_id(id: u8) -> Option<Self> {
        GROUPS.into_iter().find(|g| g.id == id)
    }

    /// The group's name in configuration files (`ffdhe2048`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        GROUPS
            .into_iter()
            .find(|g| name == format!("ffdhe{}", g.bits))
    }

    /// Length of public values and of the shared secret, in bytes.
    pub fn value_len(self) -> usize {
        self.bits as usize / 8
    }

    fn modulus(self) -> BoxedUint {
        let bytes: Vec<u8> = (0..self.prime.len() / 2)
            .map(|i| u8::from_str_radix(&self.prime[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        BoxedUint::from_be_slice(&bytes, self.bits).unwrap_or_else(|_| BoxedUint::one())
    }

    fn params(self) -> Option<BoxedMontyParams> {
        Odd::new(self.modulus())
            .into_option()
            .map(BoxedMontyParams::new)
    }

    fn pow(self, base: &BoxedUint, exp: &BoxedUint) -> Vec<u8> {
        let Some(params) = self.params() else {
            return Vec::new();
        };
        let b = BoxedMontyForm::new(base.clone(), params);
        b.pow_bounded_exp(exp, EXPONENT_BITS)
            .retrieve()
            .to_be_bytes()
            .to_vec()
    }

    /// A fresh key pair.
    pub fn keypair(self) -> Result<KeyPair, DhError> {
        let mut x = [0u8; EXPONENT_BITS as usize / 8];
        getrandom::fill(&mut x).map_err(|_| DhError::Random)?;
        // A full-length exponent: never a small one.
        x[0] |= 0x80;
        let private = BoxedUint::from_be_slice(&x, EXPONENT_BITS).map_err(|_| DhError::Random)?;
        let g = BoxedUint::from_be_slice(&[2], self.bits).map_err(|_| DhError::Random)?;
        let public = self.pow(&g, &private);
        Ok(KeyPair {
            group: self,
            private,
            public,
        })
    }
}

impl KeyPair {
    /// The shared secret with the peer's public value: (peer)^x mod p, big-endian, the
    /// prime's length. Refuses values that are not in 2..p-2 (they would fix the secret).
    pub fn shared(&self, peer: &[u8]) -> Result<Vec<u8>, DhError> {
        let g = self.group;
        if peer.len() != g.value_len() {
            return Err(DhError::BadPublic);
        }
        let y = BoxedUint::from_be_slice(peer, g.bits).map_err(|_| DhError::BadPublic)?;
        let p = g.modulus();
        let one = BoxedUint::one_with_precision(g.bits);
        let p_minus_one = p.wrapping_sub(&one);
        if y <= one || y >= p_minus_one {
            return Err(DhError::BadPublic);
        }
        Ok(g.pow(&y, &self.private))
    }
}

/// ffdhe2048 (RFC 7919 appendix A), big-endian hex.
const FFDHE2048: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
);

/// ffdhe3072 (RFC 7919 appendix A), big-endian hex.
const FFDHE3072: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
);

/// ffdhe4096 (RFC 7919 appendix A), big-endian hex.
const FFDHE4096: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A",
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038",
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF",
);

/// ffdhe6144 (RFC 7919 appendix A), big-endian hex.
const FFDHE6144: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A",
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038",
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A",
    "4E677D2C38532A3A23BA4442CAF53EA63BB454329B7624C8917BDD64B1C0FD4C",
    "B38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477",
    "A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E",
    "7FB29F8C183023C3587E38DA0077D9B4763E4E4B94B2BBC194C6651E77CAF992",
    "EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C",
    "D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B9117",
    "8CCF2DD5CACEF403EC9D1810C6272B045B3B71F9DC6B80D63FDD4A8E9ADB1E69",
    "62A69526D43161C1A41D570D7938DAD4A40E329CD0E40E65FFFFFFFFFFFFFFFF",
);

/// ffdhe8192 (RFC 7919 appendix A), big-endian hex.
const FFDHE8192: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A",
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038",
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E0DD9020BFD64B645036C7A",
    "4E677D2C38532A3A23BA4442CAF53EA63BB454329B7624C8917BDD64B1C0FD4C",
    "B38E8C334C701C3ACDAD0657FCCFEC719B1F5C3E4E46041F388147FB4CFDB477",
    "A52471F7A9A96910B855322EDB6340D8A00EF092350511E30ABEC1FFF9E3A26E",
    "7FB29F8C183023C3587E38DA0077D9B4763E4E4B94B2BBC194C6651E77CAF992",
    "EEAAC0232A281BF6B3A739C1226116820AE8DB5847A67CBEF9C9091B462D538C",
    "D72B03746AE77F5E62292C311562A846505DC82DB854338AE49F5235C95B9117",
    "8CCF2DD5CACEF403EC9D1810C6272B045B3B71F9DC6B80D63FDD4A8E9ADB1E69",
    "62A69526D43161C1A41D570D7938DAD4A40E329CCFF46AAA36AD004CF600C838",
    "1E425A31D951AE64FDB23FCEC9509D43687FEB69EDD1CC5E0B8CC3BDF64B10EF",
    "86B63142A3AB8829555B2F747C932665CB2C0F1CC01BD70229388839D2AF05E4",
    "54504AC78B7582822846C0BA35C35F5C59160CC046FD8251541FC68C9C86B022",
    "BB7099876A460E7451A8A93109703FEE1C217E6C3826E52C51AA691E0E423CFC",
    "99E9E31650C1217B624816CDAD9A95F9D5B8019488D9C0A0A1FE3075A577E231",
    "83F81D4A3F2FA4571EFC8CE0BA8A4FE8B6855DFE72B0A66EDED2FBABFBE58A30",
    "FAFABE1C5D71A87E2F741EF8C1FE86FEA6BBFDE530677F0D97D11D49F7A8443D",
    "0822E506A9F4614E011E2A94838FF88CD68C8BB7C5C6424CFFFFFFFFFFFFFFFF",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_have_the_rfc_7919_shape() {
        for g in GROUPS {
            assert_eq!(g.prime.len() * 4, g.bits as usize);
            // The top and bottom 64 bits are all ones (RFC 7919 appendix A).
            assert!(g.prime.starts_with("FFFFFFFFFFFFFFFF"), "ffdhe{}", g.bits);
            assert!(g.prime.ends_with("FFFFFFFFFFFFFFFF"), "ffdhe{}", g.bits);
            // All share the digits of e after the leading ones.
            assert!(g.prime[16..].starts_with("ADF85458A2BB4A9AAFDC5620273D3CF1"));
            assert_eq!(Group::from_name(&format!("ffdhe{}", g.bits)), Some(g));
        }
        assert_eq!(Group::from_id(dh_group::NULL), None);
    }

    #[test]
    fn both_sides_agree() {
        let g = Group::from_id(dh_group::FFDHE2048).unwrap();
        let a = g.keypair().unwrap();
        let b = g.keypair().unwrap();
        assert_eq!(a.public.len(), 256);
        assert_ne!(a.public, b.public);
        let s1 = a.shared(&b.public).unwrap();
        let s2 = b.shared(&a.public).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 256);
    }

    #[test]
    fn degenerate_public_values_are_refused() {
        let g = Group::from_id(dh_group::FFDHE2048).unwrap();
        let a = g.keypair().unwrap();
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(a.shared(&one), Err(DhError::BadPublic));
        assert_eq!(a.shared(&[0u8; 256]), Err(DhError::BadPublic));
        assert_eq!(a.shared(&[0xff; 256]), Err(DhError::BadPublic), "above p");
        assert_eq!(a.shared(&[2u8; 255]), Err(DhError::BadPublic), "short");
        let mut pm1 = g.modulus().to_be_bytes().to_vec();
        pm1[255] -= 1;
        assert_eq!(a.shared(&pm1), Err(DhError::BadPublic), "p - 1");
    }
}
