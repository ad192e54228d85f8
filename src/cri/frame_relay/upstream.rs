//! Frames from containerd: its header blocks decoded (when call metrics are on) to read each
//! call's status, and what goes back to the caller queued for the caller's connection window.

use bytes::Bytes;
use h2::Reason;

use super::{Fatal, PendingBlock, Queued, Relay, CLIENT_CREDIT_BATCH, UPSTREAM_CREDIT_BATCH};
use crate::cri::frames::{self, Head, HEADER_LEN};

impl Relay {
    pub(super) fn on_upstream_frame(&mut self, head: Head, whole: &[u8]) -> Result<(), Fatal> {
        let payload = &whole[HEADER_LEN..];
        if let Some(block) = self.u_block.as_mut() {
            if head.kind != frames::CONTINUATION || head.stream != block.stream {
                return Err(Reason::INTERNAL_ERROR);
            }
            if block.raw.len() + whole.len() > frames::MAX_HEADER_BLOCK {
                return Err(Reason::INTERNAL_ERROR);
            }
            block.fragment.extend_from_slice(payload);
            block.raw.extend_from_slice(whole);
            if head.flags & frames::END_HEADERS != 0 {
                let block = self.u_block.take().expect("checked above");
                self.upstream_block(block)?;
            }
            return Ok(());
        }
        let s = head.stream;
        match head.kind {
            frames::DATA => {
                let data = frames::unpad(head.flags, payload).map_err(|_| Reason::INTERNAL_ERROR)?;
                let end = head.flags & frames::END_STREAM != 0;
                if end {
                    if let Some((probe, _)) = self.probes.remove(&s) {
                        probe.end();
                    }
                }
                let padding = payload.len() - data.len();
                if padding > 0 {
                    // Passed on unpadded: containerd gets the padding's credit back at once.
                    self.upstream_credit += padding as u32;
                    if !end {
                        frames::window_update(&mut self.u_out, s, padding as u32);
                    }
                }
                if self.c_queue.is_empty() && self.client_window >= data.len() as i64 && padding == 0 {
                    self.client_window -= data.len() as i64;
                    self.upstream_credit += data.len() as u32;
                    self.c_out.extend_from_slice(whole);
                } else {
                    self.c_queue.push_back(Queued::Data { stream: s, end, payload: Bytes::copy_from_slice(data), upstream: true });
                    self.drain_queue();
                }
            }
            frames::HEADERS => {
                let (fragment, _) = frames::headers_fragment(head.flags, payload).map_err(|_| Reason::INTERNAL_ERROR)?;
                if self.calls.is_none() && head.flags & frames::END_HEADERS != 0 {
                    // Nothing reads containerd's header blocks (see `upstream_block`).
                    self.queue_raw_for_client(whole);
                    return Ok(());
                }
                let block = PendingBlock {
                    stream: s,
                    end_stream: head.flags & frames::END_STREAM != 0,
                    prio: None,
                    fragment: fragment.to_vec(),
                    raw: whole.to_vec(),
                };
                if head.flags & frames::END_HEADERS != 0 {
                    self.upstream_block(block)?;
                } else {
                    self.u_block = Some(block);
                }
            }
            // containerd never pushes (the caller disables it); a stray CONTINUATION is broken.
            frames::PUSH_PROMISE | frames::CONTINUATION => return Err(Reason::INTERNAL_ERROR),
            frames::RST_STREAM => {
                if let Some((probe, answered)) = self.probes.remove(&s) {
                    if answered {
                        probe.failed();
                    }
                }
                self.queue_raw_for_client(whole);
            }
            frames::SETTINGS => {
                if head.flags & frames::ACK == 0 {
                    let before = self.server_settings;
                    self.server_settings.apply(payload).map_err(|_| Reason::INTERNAL_ERROR)?;
                    if self.server_settings.header_table_size != before.header_table_size {
                        self.encoder.update_max_size(self.server_settings.header_table_size);
                        self.req_decoder.queue_size_update(self.server_settings.header_table_size);
                    }
                    let delta = self.server_settings.initial_window - before.initial_window;
                    for o in self.owned.values_mut() {
                        o.recv_window += delta;
                    }
                }
                self.queue_raw_for_client(whole);
            }
            frames::GOAWAY if payload.len() >= 8 => {
                // The caller must not retry a call pullgate answered itself: its stream is
                // counted as processed.
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                let mut frame = whole.to_vec();
                frame[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&last.max(self.max_owned).to_be_bytes());
                self.queue_raw_for_client(&frame);
            }
            _ => self.queue_raw_for_client(whole),
        }
        Ok(())
    }

    fn upstream_block(&mut self, block: PendingBlock) -> Result<(), Fatal> {
        if self.calls.is_none() {
            // Without call metrics, nothing needs a call's status, and pullgate's own responses
            // never touch the caller's table: containerd's blocks are passed on undecoded (and
            // never decoded later, so the decoder need not follow containerd's encoder).
            self.queue_raw_for_client(&block.raw);
            return Ok(());
        }
        // Decoded to stay in sync with containerd's encoder, and for the call's status.
        let decoded = frames::decode_block(&mut self.resp_decoder, &block.fragment).map_err(|_| Reason::INTERNAL_ERROR)?;
        if let Some((probe, answered)) = self.probes.get_mut(&block.stream) {
            if let Some(status) = decoded.get("grpc-status") {
                let mut map = http::HeaderMap::new();
                map.insert("grpc-status", status.clone());
                probe.headers(&map);
            }
            *answered = true;
            if block.end_stream {
                if let Some((probe, _)) = self.probes.remove(&block.stream) {
                    probe.end();
                }
            }
        }
        self.queue_raw_for_client(&block.raw);
        Ok(())
    }

    fn queue_raw_for_client(&mut self, bytes: &[u8]) {
        if self.c_queue.is_empty() {
            self.c_out.extend_from_slice(bytes);
        } else {
            self.c_queue.push_back(Queued::Raw(Bytes::copy_from_slice(bytes)));
        }
    }

    pub(super) fn queue_for_client(&mut self, q: Queued) {
        self.c_queue.push_back(q);
        self.drain_queue();
    }

    /// Writes out what waits for the caller's connection window, in order; splits a DATA
    /// frame larger than the window or the caller's frame size.
    pub(super) fn drain_queue(&mut self) {
        let max = self.client_settings.max_frame as usize;
        while let Some(front) = self.c_queue.front_mut() {
            match front {
                Queued::Raw(b) => {
                    self.c_out.extend_from_slice(b);
                    self.c_queue.pop_front();
                }
                Queued::Data { stream, end, payload, upstream } => {
                    let n = payload.len().min(max).min(self.client_window.max(0) as usize);
                    if n == 0 && !payload.is_empty() {
                        return;
                    }
                    let chunk = payload.split_to(n);
                    let last = payload.is_empty();
                    let flags = if last && *end { frames::END_STREAM } else { 0 };
                    frames::frame(&mut self.c_out, frames::DATA, flags, *stream, &chunk);
                    self.client_window -= n as i64;
                    if *upstream {
                        self.upstream_credit += n as u32;
                    }
                    if last {
                        self.c_queue.pop_front();
                    }
                }
            }
        }
    }

    /// Sends the connection credit owed to each side.
    pub(super) fn flush_credit(&mut self) {
        let later = self.client_credit_later;
        if self.client_credit > 0 || (later > 0 && (!self.c_out.is_empty() || later >= CLIENT_CREDIT_BATCH)) {
            frames::window_update(&mut self.c_out, 0, self.client_credit.saturating_add(later));
            self.client_credit = 0;
            self.client_credit_later = 0;
        }
        if self.upstream_credit >= UPSTREAM_CREDIT_BATCH {
            frames::window_update(&mut self.u_out, 0, self.upstream_credit);
            self.upstream_credit = 0;
        }
    }
}
