//! Field offsets of every wire structure, checked against the specifications' figures.

use core::mem::offset_of;

use crate::auth::*;
use crate::command::*;
use crate::fabrics::*;
use crate::identify::*;
use crate::log::*;
use crate::pdu::*;
use crate::resv::*;

/// One test per structure; each line checks one field's byte offset.
macro_rules! offsets {
    ($name:ident, $ty:ty, { $($field:ident => $off:expr),* $(,)? }) => {
        #[test]
        fn $name() {
            $(assert_eq!(offset_of!($ty, $field), $off, concat!(stringify!($ty), ".", stringify!($field)));)*
        }
    };
}

offsets!(sqe_fields, Sqe, {
    opcode => 0, flags => 1, cid => 2, nsid => 4, cdw2 => 8, cdw3 => 12, mptr => 16,
    dptr => 24, cdw10 => 40, cdw11 => 44, cdw12 => 48, cdw13 => 52, cdw14 => 56, cdw15 => 60,
});
offsets!(sgl_fields, SglDescriptor, { addr => 0, length => 8, rsvd => 12, kind => 15 });
offsets!(cqe_fields, Cqe, {
    result => 0, result_hi => 4, sqhd => 8, sqid => 10, cid => 12, status => 14,
});
offsets!(dsm_range_fields, DsmRange, { attributes => 0, nlb => 4, slba => 8 });
offsets!(connect_cmd_fields, ConnectCmd, {
    opcode => 0, cid => 2, fctype => 4, dptr => 24, recfmt => 40, qid => 42, sqsize => 44,
    cattr => 46, kato => 48,
});
offsets!(connect_data_fields, ConnectData, {
    hostid => 0, cntlid => 16, subnqn => 256, hostnqn => 512, rsvd2 => 768,
});
offsets!(property_cmd_fields, PropertyCmd, {
    opcode => 0, cid => 2, fctype => 4, attrib => 40, offset => 44, value => 48,
});
offsets!(common_header_fields, CommonHeader, { pdu_type => 0, flags => 1, hlen => 2, pdo => 3, plen => 4 });
offsets!(icreq_fields, IcReq, { ch => 0, pfv => 8, hpda => 10, dgst => 11, maxr2t => 12, rsvd => 16 });
offsets!(icresp_fields, IcResp, { ch => 0, pfv => 8, cpda => 10, dgst => 11, maxh2cdata => 12 });
offsets!(term_req_fields, TermReq, { ch => 0, fes => 8, fei => 10, rsvd => 14 });
offsets!(capsule_cmd_fields, CapsuleCmd, { ch => 0, sqe => 8 });
offsets!(capsule_resp_fields, CapsuleResp, { ch => 0, cqe => 8 });
offsets!(data_header_fields, DataHeader, { ch => 0, cccid => 8, ttag => 10, datao => 12, datal => 16 });
offsets!(r2t_fields, R2t, { ch => 0, cccid => 8, ttag => 10, r2to => 12, r2tl => 16 });
offsets!(identify_controller_fields, IdentifyController, {
    vid => 0, ssvid => 2, sn => 4, mn => 24, fr => 64, rab => 72, ieee => 73, cmic => 76,
    mdts => 77, cntlid => 78, ver => 80, rtd3r => 84, rtd3e => 88, oaes => 92, ctratt => 96,
    rrls => 100, cntrltype => 111, fguid => 112, crdt => 128, oacs => 256, acl => 258,
    aerl => 259, frmw => 260, lpa => 261, elpe => 262, npss => 263, avscc => 264,
    apsta => 265, wctemp => 266, cctemp => 268, kas => 320, anatt => 342, anacap => 343,
    anagrpmax => 344, nanagrpid => 348, pels => 352, sqes => 512, cqes => 513,
    maxcmd => 514, nn => 516, oncs => 520, fuses => 522, fna => 524, vwc => 525, awun => 526,
    awupf => 528, icsvscc => 530, nwpc => 531, acwu => 532, ocfs => 534, sgls => 536,
    mnan => 540, subnqn => 768, ioccsz => 1792, iorcsz => 1796, icdoff => 1800,
    fcatt => 1802, msdbd => 1803, ofcs => 1804, psd => 2048, vs => 3072,
});
offsets!(identify_namespace_fields, IdentifyNamespace, {
    nsze => 0, ncap => 8, nuse => 16, nsfeat => 24, nlbaf => 25, flbas => 26, mc => 27,
    dpc => 28, dps => 29, nmic => 30, rescap => 31, fpi => 32, dlfeat => 33, nawun => 34,
    nawupf => 36, nacwu => 38, nabsn => 40, nabo => 42, nabspf => 44, noiob => 46,
    nvmcap => 48, npwg => 64, npwa => 66, npdg => 68, npda => 70, nows => 72,
    anagrpid => 92, nsattr => 99, nvmsetid => 100, endgid => 102, nguid => 104,
    eui64 => 120, lbaf => 128, rsvd384 => 384,
});
offsets!(lba_format_fields, LbaFormat, { ms => 0, lbads => 2, rp => 3 });
offsets!(ns_descriptor_fields, NsDescriptorHeader, { nidt => 0, nidl => 1 });
offsets!(error_log_fields, ErrorLogEntry, {
    error_count => 0, sqid => 8, cmdid => 10, status => 12, pel => 14, lba => 16, nsid => 24,
    vsia => 28, trtype => 29, csi => 32, tsi => 40,
});
offsets!(smart_log_fields, SmartLog, {
    critical_warning => 0, temperature => 1, avail_spare => 3, spare_thresh => 4,
    percent_used => 5, endu_grp_crit_warn => 6, data_units_read => 32,
    data_units_written => 48, host_reads => 64, host_writes => 80, ctrl_busy_time => 96,
    power_cycles => 112, power_on_hours => 128, unsafe_shutdowns => 144,
    media_errors => 160, num_err_log_entries => 176, warning_temp_time => 192,
    critical_comp_time => 196, temp_sensor => 200,
});
offsets!(discovery_header_fields, DiscoveryLogHeader, { genctr => 0, numrec => 8, recfmt => 16 });
offsets!(discovery_entry_fields, DiscoveryLogEntry, {
    trtype => 0, adrfam => 1, subtype => 2, treq => 3, portid => 4, cntlid => 6, asqsz => 8,
    eflags => 10, trsvcid => 32, subnqn => 256, traddr => 512, tsas => 768,
});

#[test]
fn sqe_lba_helpers() {
    let mut sqe = Sqe::default();
    sqe.set_lba_range(0x1_2345_6789, 256);
    assert_eq!(sqe.slba(), 0x1_2345_6789);
    assert_eq!(sqe.nlb(), 256);
    assert_eq!(sqe.cdw12.get(), 255);
}

#[test]
fn cqe_status_helpers() {
    let mut cqe = Cqe::default();
    cqe.set_status_field(crate::status::CONNECT_INVALID_HOST);
    assert_eq!(cqe.status.get(), 0x184 << 1);
    assert_eq!(cqe.status_field(), 0x184);
    cqe.result.set(1);
    cqe.result_hi.set(2);
    assert_eq!(cqe.result64(), 0x2_0000_0001);
}

#[test]
fn ns_descriptor_list() {
    let mut out = [0xffu8; 4096];
    write_ns_descriptors(&mut out, &[1; 16], &[2; 16]);
    assert_eq!(&out[..4], &[nidt::NGUID, 16, 0, 0]);
    assert_eq!(&out[4..20], &[1; 16]);
    assert_eq!(&out[20..24], &[nidt::UUID, 16, 0, 0]);
    assert_eq!(&out[24..40], &[2; 16]);
    assert_eq!(&out[40..45], &[nidt::CSI, 1, 0, 0, 0]);
    assert!(out[45..].iter().all(|&b| b == 0));
}

#[test]
fn string_fields() {
    let mut f = [0u8; 8];
    crate::put_ascii(&mut f, "4420");
    assert_eq!(&f, b"4420    ");
    assert_eq!(crate::get_str(&f), "4420");
    crate::put_str(&mut f, "nqn");
    assert_eq!(&f, b"nqn\0\0\0\0\0");
    assert_eq!(crate::get_str(&f), "nqn");
}

#[test]
fn expected_header_lengths() {
    assert_eq!(expected_hlen(pdu_type::CAPSULE_CMD), Some(72));
    assert_eq!(expected_hlen(pdu_type::IC_REQ), Some(128));
    assert_eq!(expected_hlen(pdu_type::R2T), Some(24));
    assert_eq!(expected_hlen(0x08), None);
    assert_eq!(expected_hlen(0xff), None);
}
offsets!(firmware_slot_fields, FirmwareSlotLog, { afi => 0, frs => 8, rsvd64 => 64 });
offsets!(command_effects_fields, CommandEffectsLog, { acs => 0, iocs => 1024, rsvd2048 => 2048 });
offsets!(negotiate_fields, NegotiateHeader, { auth_type => 0, auth_id => 1, t_id => 4, sc_c => 6, napd => 7 });
offsets!(protocol_descriptor_fields, ProtocolDescriptor, { authid => 0, halen => 2, dhlen => 3, idlist => 4 });
offsets!(challenge_fields, ChallengeHeader, {
    t_id => 4, hl => 6, hashid => 8, dhgid => 9, dhvlen => 10, seqnum => 12,
});
offsets!(reply_fields, ReplyHeader, { t_id => 4, hl => 6, cvalid => 8, dhvlen => 10, seqnum => 12 });
offsets!(success1_fields, Success1Header, { t_id => 4, hl => 6, rvalid => 8 });
offsets!(failure_fields, Failure, { t_id => 4, rescode => 6, rescode_exp => 7 });
offsets!(ana_header_fields, ana::Header, { chgcnt => 0, ngrps => 8, rsvd10 => 10 });
offsets!(ana_group_fields, ana::GroupDescriptor, {
    grpid => 0, nnsids => 4, chgcnt => 8, state => 16, rsvd17 => 17,
});
offsets!(resv_status_header_fields, ResvStatusHeader, {
    generation => 0, rtype => 4, regctl => 5, rsvd7 => 7, ptpls => 9, rsvd10 => 10,
});
offsets!(registered_ctrl_ext_fields, RegisteredCtrlExt, {
    cntlid => 0, rcsts => 2, rsvd3 => 3, rkey => 8, hostid => 16, rsvd32 => 32,
});
offsets!(resv_notification_log_fields, ResvNotificationLog, {
    count => 0, kind => 8, available => 9, rsvd10 => 10, nsid => 12, rsvd16 => 16,
});
offsets!(resv_key_data_fields, AcquireData, { crkey => 0, prkey => 8 });
offsets!(resv_register_data_fields, RegisterData, { crkey => 0, nrkey => 8 });
