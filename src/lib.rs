pub mod config;
pub mod cli;
pub mod server;
pub mod proto {
    tonic::include_proto!("calldesk.v1");
    include!(concat!(env!("OUT_DIR"), "/calldesk.v1.serde.rs"));
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("calldesk_descriptor");
}
