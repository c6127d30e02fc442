//! The microphone and the speakers. What the rest of the client sees is
//! [`Ring`]s: 48 kHz mono samples from the microphone, 48 kHz stereo samples
//! to the speakers, and the same stereo back as the speakers played it (for
//! the echo canceller, [`crate::cleanup`]). With devices ([`AudioIo::open`]), a thread of their own
//! owns the cpal streams and their callbacks fill and drain the rings,
//! converting rate and channels; without ([`AudioIo::detached`]: no sound
//! card, headless, tests) the rings are all there is and whoever holds them
//! plays the device's part.

use crate::device_list::{AudioDevice, AudioDevices, DeviceChoice, pick};
use crate::resample::{Resampler, from_stereo, to_mono};
use crate::{FRAME_SAMPLES, SAMPLE_RATE};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The microphone ring holds at most this (200 ms); older samples go.
const MIC_RING: usize = 10 * FRAME_SAMPLES;
/// The speaker ring holds at most this (200 ms of stereo).
const SPEAKER_RING: usize = 2 * 10 * FRAME_SAMPLES;
/// The most a callback pushes at once without the ring allocating: a period
/// of 8,192 stereo frames.
const MAX_PUSH: usize = 2 * 8_192;
/// After a device goes away, the wait before opening the defaults again.
const REOPEN_AFTER: Duration = Duration::from_secs(2);
/// While a chosen device is missing (and the default plays instead), how
/// often to look whether it is back (plugged in again).
const LOOK_FOR_CHOSEN_EVERY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no audio output device")]
    NoOutput,
    #[error("no microphone")]
    NoInput,
    #[error("the {what} uses {format} samples; Plaza plays f32 or i16")]
    Format { what: &'static str, format: String },
    #[error("the {what} could not start: {cause}")]
    Stream { what: &'static str, cause: String },
}

/// A bounded queue of samples between an audio callback and the voice
/// task. Full, it drops the oldest (audio late is audio lost anyway).
#[derive(Debug, Clone)]
pub struct Ring {
    samples: Arc<Mutex<Queue>>,
    capacity: usize,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Queue {
    samples: VecDeque<f32>,
    /// When the last samples came: how far a stream that arrives in whole
    /// device periods has really got between them.
    last_push: Option<Instant>,
}

impl std::ops::Deref for Queue {
    type Target = VecDeque<f32>;
    fn deref(&self) -> &VecDeque<f32> {
        &self.samples
    }
}

impl std::ops::DerefMut for Queue {
    fn deref_mut(&mut self) -> &mut VecDeque<f32> {
        &mut self.samples
    }
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        // A full ring takes a block before it drops as much: room for the
        // largest device period on top, so an audio callback never
        // allocates.
        let room = capacity + MAX_PUSH;
        Ring { samples: Arc::new(Mutex::new(Queue { samples: VecDeque::with_capacity(room), last_push: None })), capacity, dropped: Arc::new(AtomicU64::new(0)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, samples: &[f32]) {
        self.push_at(samples, Instant::now());
    }

    /// [`Ring::push`], the samples having come at `at` (a simulated clock).
    pub fn push_at(&self, samples: &[f32], at: Instant) {
        let mut q = self.lock();
        q.last_push = Some(at);
        q.extend(samples);
        let over = q.len().saturating_sub(self.capacity);
        if over > 0 {
            q.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
    }

    /// Fills `out` from the front; returns how many samples it had.
    pub fn pop_into(&self, out: &mut [f32]) -> usize {
        let mut q = self.lock();
        let n = out.len().min(q.len());
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        n
    }

    /// Takes exactly `out.len()` samples, or none when fewer are there.
    pub fn take_exact(&self, out: &mut [f32]) -> bool {
        let mut q = self.lock();
        let n = out.len();
        if q.len() < n {
            return false;
        }
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        true
    }

    /// Drops all but the newest `n` samples (audio that waited too long
    /// is better skipped than played late); returns how many went.
    pub fn keep_newest(&self, n: usize) -> usize {
        let mut q = self.lock();
        let over = q.len().saturating_sub(n);
        q.drain(..over);
        over
    }

    /// Drops the oldest `n` samples (or all there are); returns how many went.
    pub fn discard_oldest(&self, n: usize) -> usize {
        let mut q = self.lock();
        let n = n.min(q.len());
        q.drain(..n);
        n
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Moves every waiting sample onto `out`; returns when the last came,
    /// read under the same lock (so the count and the time agree).
    pub fn drain_into(&self, out: &mut Vec<f32>) -> Option<Instant> {
        let mut q = self.lock();
        out.extend(q.samples.drain(..));
        q.last_push
    }

    /// How many samples wait, and when the last came.
    pub fn len_and_last_push(&self) -> (usize, Option<Instant>) {
        let q = self.lock();
        (q.len(), q.last_push)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The voice's audio: the rings, and the device thread behind them if any.
#[derive(Debug)]
pub struct AudioIo {
    /// 48 kHz mono from the microphone; none when there is none or it is off.
    pub mic: Option<Ring>,
    /// 48 kHz interleaved stereo to the speakers.
    pub speakers: Ring,
    /// What the speakers played, in the order they played it, silence for
    /// the gaps included: 48 kHz interleaved stereo, paired with the
    /// microphone to cancel its echo. With detached audio, whoever plays
    /// the speakers' ring puts here what it played (or nothing: silence).
    pub played: Ring,
    /// What is playing and recording now, for the log and the HUD.
    state: Arc<Mutex<DeviceState>>,
    /// Where a new choice of devices goes (the device thread); none when
    /// detached.
    choices: Option<mpsc::Sender<DeviceChoice>>,
    /// The choice last asked for.
    chosen: Mutex<DeviceChoice>,
    /// Dropping it stops the device thread and its streams.
    _stop: Option<mpsc::Sender<()>>,
}

/// What the device thread has open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The devices playing and recording, with their rates.
    pub description: String,
    /// A chosen device that is not there (or could not start), and what
    /// plays instead; the default takes its place until it is back.
    pub problem: Option<String>,
}

impl AudioIo {
    /// Rings with no device behind them.
    pub fn detached(mic: bool) -> AudioIo {
        let state = DeviceState { description: "no audio device".into(), problem: None };
        AudioIo {
            mic: mic.then(|| Ring::new(MIC_RING)),
            speakers: Ring::new(SPEAKER_RING),
            played: Ring::new(SPEAKER_RING),
            state: Arc::new(Mutex::new(state)),
            choices: None,
            chosen: Mutex::default(),
            _stop: None,
        }
    }

    /// What is open now, and any trouble with the choice.
    pub fn state(&self) -> DeviceState {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// What is playing and recording now.
    pub fn description(&self) -> String {
        self.state().description
    }

    /// Opens `choice` in place of what is open (the rings stay, so a call
    /// hears a short gap at most). Detached audio only remembers it.
    pub fn choose(&self, choice: DeviceChoice) {
        *self.chosen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = choice.clone();
        if let Some(choices) = &self.choices {
            let _ = choices.send(choice);
        }
    }

    /// The choice of devices last asked for (at opening, or since).
    pub fn chosen(&self) -> DeviceChoice {
        self.chosen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The output device `choice` names, and its input when `mic`; the
    /// system's defaults where it names none, or names one that is not
    /// there (then [`DeviceState::problem`] says so, and the chosen one is
    /// opened once it appears). No output at all is an error; no microphone
    /// only leaves `mic` empty (listening still works), with the reason in
    /// the description.
    pub fn open(mic: bool, choice: DeviceChoice) -> Result<AudioIo, DeviceError> {
        if !sound_system_present() {
            return Err(DeviceError::NoOutput);
        }
        let speakers = Ring::new(SPEAKER_RING);
        let played = Ring::new(SPEAKER_RING);
        let mic_ring = Ring::new(MIC_RING);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (choice_tx, choices) = mpsc::channel::<DeviceChoice>();
        let state = Arc::new(Mutex::new(DeviceState::default()));
        let (out_ring, played_ring, in_ring, thread_state) = (speakers.clone(), played.clone(), mic_ring.clone(), state.clone());
        let chosen = Mutex::new(choice.clone());
        let mut choice = choice;
        // cpal's streams are not Send everywhere: they live and die on this
        // thread, which also opens them again when a device goes away.
        let spawned = std::thread::Builder::new().name("plaza-audio".into()).spawn(move || {
            let host = cpal::default_host();
            let (lost_tx, lost) = mpsc::channel::<String>();
            let mut ready = Some(ready_tx);
            loop {
                let output = match start_output(&host, choice.output.as_deref(), out_ring.clone(), played_ring.clone(), lost_tx.clone()) {
                    Ok(o) => o,
                    Err(e) => match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                        None => {
                            tracing::warn!(cause = %e, retry_in = ?REOPEN_AFTER, "audio output still gone");
                            if stopped(&stop_rx, REOPEN_AFTER) {
                                return;
                            }
                            continue;
                        }
                    },
                };
                let input = if mic { Some(start_input(&host, choice.input.as_deref(), in_ring.clone(), lost_tx.clone())) } else { None };
                let description = match &input {
                    Some(Ok(i)) => format!("{} · {}", output.description, i.description),
                    Some(Err(e)) => format!("{} · {e}", output.description),
                    None => format!("{} · microphone off", output.description),
                };
                let opened_input = input.as_ref().and_then(|i| i.as_ref().ok());
                // A chosen device that was not listed is looked for again (not
                // one that was there and would not start: that would reopen
                // every few seconds for nothing).
                let missing = output.missing || opened_input.is_some_and(|i| i.missing);
                let problems: Vec<&str> = [output.problem.as_deref(), opened_input.and_then(|i| i.problem.as_deref())].into_iter().flatten().collect();
                let problem = (!problems.is_empty()).then(|| problems.join("; "));
                if let Some(problem) = &problem {
                    tracing::warn!(%problem, "a chosen audio device is missing; the default plays instead");
                }
                *thread_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = DeviceState { description: description.clone(), problem: problem.clone() };
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Ok(matches!(input, Some(Ok(_)))));
                    }
                    None => tracing::info!(devices = %description, "audio devices open"),
                }
                // Until the AudioIo is dropped, a device goes away, another
                // is chosen, or a chosen one that was missing is back.
                let mut looked = Instant::now();
                let (cause, wait) = loop {
                    if stopped(&stop_rx, Duration::from_millis(250)) {
                        return;
                    }
                    if let Ok(cause) = lost.try_recv() {
                        break (cause, REOPEN_AFTER);
                    }
                    if let Some(newest) = choices.try_iter().last()
                        && newest != choice
                    {
                        choice = newest;
                        break ("another device was chosen".to_owned(), Duration::ZERO);
                    }
                    if missing && looked.elapsed() >= LOOK_FOR_CHOSEN_EVERY {
                        looked = Instant::now();
                        if chosen_present(&host, &choice, mic) {
                            break ("a chosen device is back".to_owned(), Duration::ZERO);
                        }
                    }
                };
                tracing::info!(%cause, retry_in = ?wait, "opening the audio devices again");
                drop(input);
                drop(output);
                while lost.try_recv().is_ok() {}
                if stopped(&stop_rx, wait) {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            return Err(DeviceError::Stream { what: "audio thread", cause: e.to_string() });
        }
        let has_mic = ready_rx.recv().map_err(|_| DeviceError::Stream { what: "audio thread", cause: "it stopped".into() })??;
        Ok(AudioIo { mic: has_mic.then_some(mic_ring), speakers, played, state, choices: Some(choice_tx), chosen, _stop: Some(stop_tx) })
    }
}

/// The devices there are, outputs and inputs (none where there is no sound
/// system to ask: see [`sound_system_present`]).
pub fn list() -> AudioDevices {
    if !sound_system_present() {
        return AudioDevices::default();
    }
    let host = cpal::default_host();
    AudioDevices { outputs: names(host.output_devices()), inputs: names(host.input_devices()) }
}

/// The ids and names of `devices`, as [`listed`] finds them.
fn names<I: Iterator<Item = cpal::Device>>(devices: Result<I, cpal::Error>) -> Vec<AudioDevice> {
    listed(devices).into_iter().map(|(d, _)| d).collect()
}

/// Each device with its id and name; one whose id can't be read is left
/// out (it could not be chosen again), one listed twice is listed once.
fn listed<I: Iterator<Item = cpal::Device>>(devices: Result<I, cpal::Error>) -> Vec<(AudioDevice, cpal::Device)> {
    let Ok(devices) = devices else { return Vec::new() };
    let mut out: Vec<(AudioDevice, cpal::Device)> = Vec::new();
    for device in devices {
        let Ok(id) = device.id() else { continue };
        let id = id.to_string();
        if out.iter().all(|(d, _)| d.id != id) {
            out.push((AudioDevice { id, name: device_name(&device) }, device));
        }
    }
    out
}

/// The device `wanted` names among `devices`, or the default with why.
fn chosen_or_default<I: Iterator<Item = cpal::Device>>(
    what: &'static str,
    wanted: Option<&str>,
    devices: impl FnOnce() -> Result<I, cpal::Error>,
    default: impl Fn() -> Option<cpal::Device>,
) -> (Option<cpal::Device>, Option<String>) {
    let Some(wanted) = wanted else { return (default(), None) };
    let mut listed = listed(devices());
    let names: Vec<AudioDevice> = listed.iter().map(|(d, _)| d.clone()).collect();
    match pick(what, &names, wanted) {
        Ok(found) => {
            let at = names.iter().position(|d| d.id == found.id).expect("picked from these");
            (Some(listed.swap_remove(at).1), None)
        }
        Err(e) => {
            tracing::info!(wanted, devices = %e.known(), "{e}");
            (default(), Some(format!("{e}; using the default")))
        }
    }
}

/// Whether the devices `choice` names are all listed now.
fn chosen_present(host: &cpal::Host, choice: &DeviceChoice, mic: bool) -> bool {
    let output = choice.output.as_deref().is_none_or(|w| pick("speaker", &names(host.output_devices()), w).is_ok());
    let input = !mic || choice.input.as_deref().is_none_or(|w| pick("microphone", &names(host.input_devices()), w).is_ok());
    output && input
}

/// A started stream, what it is, and trouble with the choice if any.
struct Opened {
    _stream: cpal::Stream,
    description: String,
    problem: Option<String>,
    /// The chosen device was not listed (rather than listed and failing to
    /// start): worth looking for again.
    missing: bool,
}

/// Whether any sound system is there to ask. On a box with no sound card
/// and no sound server, ALSA prints a page of errors to stderr on every
/// attempt; this answers first, quietly. Where it can't tell, it says yes.
fn sound_system_present() -> bool {
    let server_socket = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| {
        let dir = std::path::Path::new(&dir);
        dir.join("pulse/native").exists() || dir.join("pipewire-0").exists()
    });
    if server_socket || std::env::var_os("PULSE_SERVER").is_some() {
        return true;
    }
    // A configured default (a null device, a network sink) needs no card.
    let home_config = std::env::var_os("HOME").is_some_and(|home| std::path::Path::new(&home).join(".asoundrc").exists());
    if home_config || std::path::Path::new("/etc/asound.conf").exists() {
        return true;
    }
    match std::fs::read_to_string("/proc/asound/cards") {
        Ok(cards) => !cards.contains("no soundcards"),
        Err(_) => cfg!(not(target_os = "linux")),
    }
}

/// Waits up to `wait` for the AudioIo to be dropped; true once it is.
fn stopped(stop: &mpsc::Receiver<()>, wait: Duration) -> bool {
    !matches!(stop.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout))
}

/// Errors after which a stream is dead and its device must be opened
/// again (unplugged headphones, a changed default, a sound server
/// restart). An xrun is only a glitch.
fn device_lost(kind: cpal::ErrorKind) -> bool {
    matches!(kind, cpal::ErrorKind::DeviceNotAvailable | cpal::ErrorKind::DeviceChanged | cpal::ErrorKind::StreamInvalidated | cpal::ErrorKind::HostUnavailable)
}

/// A stream's error callback: logs, and reports a lost device to the audio
/// thread.
fn on_stream_error(what: &'static str, lost: mpsc::Sender<String>) -> impl FnMut(cpal::Error) + Send + 'static {
    move |e| {
        if device_lost(e.kind()) {
            let _ = lost.send(format!("{what}: {e}"));
        } else {
            tracing::debug!(error = %e, "{what}");
        }
    }
}

fn device_name(device: &cpal::Device) -> String {
    device.description().map(|d| d.to_string()).unwrap_or_else(|_| "audio device".into())
}

fn start_output(host: &cpal::Host, wanted: Option<&str>, ring: Ring, played: Ring, lost: mpsc::Sender<String>) -> Result<Opened, DeviceError> {
    start_chosen("speaker", wanted, || host.output_devices(), || host.default_output_device(), DeviceError::NoOutput, |d| output_on(d, ring.clone(), played.clone(), lost.clone()))
}

/// Starts the device `wanted` names among `devices`, or the default (with
/// the problem saying why) when none is wanted, none is there by that
/// name, or the one there would not start.
fn start_chosen<I: Iterator<Item = cpal::Device>>(
    what: &'static str,
    wanted: Option<&str>,
    devices: impl FnOnce() -> Result<I, cpal::Error>,
    default: impl Fn() -> Option<cpal::Device>,
    none: DeviceError,
    start: impl Fn(&cpal::Device) -> Result<(cpal::Stream, String), DeviceError>,
) -> Result<Opened, DeviceError> {
    let (device, problem) = chosen_or_default(what, wanted, devices, &default);
    let Some(device) = device else { return Err(none) };
    match start(&device) {
        Ok((stream, description)) => Ok(Opened { _stream: stream, description, missing: problem.is_some(), problem }),
        // The chosen one is there and would not start.
        Err(e) if wanted.is_some() && problem.is_none() => {
            let default = default().ok_or(none)?;
            let (stream, description) = start(&default)?;
            Ok(Opened { _stream: stream, description, problem: Some(format!("the {what} \"{}\" would not start ({e}); using the default", device_name(&device))), missing: false })
        }
        Err(e) => Err(e),
    }
}

/// Plays the speakers' ring on `device`; the stream and what it is.
fn output_on(device: &cpal::Device, ring: Ring, played: Ring, lost: mpsc::Sender<String>) -> Result<(cpal::Stream, String), DeviceError> {
    let supported = device.default_output_config().map_err(|e| DeviceError::Stream { what: "audio output", cause: e.to_string() })?;
    let config = supported.config();
    let channels = usize::from(config.channels);
    let feed = OutputFeed::new(ring, played, config.sample_rate, channels);
    let error = on_stream_error("audio output", lost);
    let stream = match supported.sample_format() {
        cpal::SampleFormat::F32 => output_stream::<f32>(device, config, feed, error),
        cpal::SampleFormat::I16 => output_stream::<i16>(device, config, feed, error),
        other => return Err(DeviceError::Format { what: "audio output", format: format!("{other:?}") }),
    };
    Ok((playing("audio output", stream)?, format!("{} ({} Hz, {channels} ch)", device_name(device), config.sample_rate)))
}

/// A stream as built, started; either failing is said for `what`.
fn playing(what: &'static str, built: Result<cpal::Stream, cpal::Error>) -> Result<cpal::Stream, DeviceError> {
    let stream = built.map_err(|e| DeviceError::Stream { what, cause: e.to_string() })?;
    stream.play().map_err(|e| DeviceError::Stream { what, cause: e.to_string() })?;
    Ok(stream)
}

/// An output stream in the device's sample type, fed in f32.
fn output_stream<T: cpal::SizedSample + cpal::FromSample<f32>>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut feed: OutputFeed,
    error: impl FnMut(cpal::Error) + Send + 'static,
) -> Result<cpal::Stream, cpal::Error> {
    let mut scratch = Vec::new();
    device.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], _| {
            scratch.resize(data.len(), 0.0);
            feed.fill(&mut scratch);
            for (d, s) in data.iter_mut().zip(&scratch) {
                *d = T::from_sample(*s);
            }
        },
        error,
        None,
    )
}

/// An input stream in the device's sample type, handed on in f32.
fn input_stream<T: cpal::SizedSample>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut take: impl FnMut(&[f32]) + Send + 'static,
    error: impl FnMut(cpal::Error) + Send + 'static,
) -> Result<cpal::Stream, cpal::Error>
where
    f32: cpal::FromSample<T>,
{
    let mut converted = Vec::new();
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            converted.clear();
            converted.extend(data.iter().map(|s| s.to_sample::<f32>()));
            take(&converted);
        },
        error,
        None,
    )
}

/// The speakers' side of the ring: 48 kHz stereo in, the device's rate and
/// channels out. What the resampler makes beyond one callback's need waits
/// for the next, so the ring is drained at exactly the device's pace; and
/// every buffer is kept, so a callback allocates nothing once warm. What it
/// takes, and silence for what it lacked, goes on to the played ring.
struct OutputFeed {
    ring: Ring,
    played: Ring,
    /// Silence to report as played when the ring ran dry, and what the
    /// last report left over in 48 kHz frames × the device's rate (so that
    /// rounding never adds up to drift).
    zeros: Vec<f32>,
    silence_left: u64,
    resampler: Resampler,
    device_hz: u32,
    channels: usize,
    stereo: Vec<f32>,
    resampled: Vec<f32>,
    mapped: Vec<f32>,
    /// Device samples made and not yet played.
    pending: VecDeque<f32>,
}

impl OutputFeed {
    fn new(ring: Ring, played: Ring, device_hz: u32, channels: usize) -> OutputFeed {
        OutputFeed {
            ring,
            played,
            zeros: Vec::new(),
            silence_left: 0,
            resampler: Resampler::new(SAMPLE_RATE, device_hz, 2),
            device_hz,
            channels: channels.max(1),
            stereo: Vec::new(),
            resampled: Vec::new(),
            mapped: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Fills `data` (device samples); silence for what the ring lacks.
    fn fill(&mut self, data: &mut [f32]) {
        while self.pending.len() < data.len() {
            let frames = (data.len() - self.pending.len()).div_ceil(self.channels);
            let want = (frames as f64 * f64::from(SAMPLE_RATE) / f64::from(self.device_hz.max(1))).ceil() as usize;
            self.stereo.resize(2 * want.max(1), 0.0);
            let got = self.ring.pop_into(&mut self.stereo);
            if got < 2 {
                break; // ran dry
            }
            self.played.push(&self.stereo[..got - got % 2]);
            self.resampled.clear();
            self.resampler.process(&self.stereo[..got - got % 2], &mut self.resampled);
            self.mapped.clear();
            from_stereo(&self.resampled, self.channels, &mut self.mapped);
            self.pending.extend(self.mapped.iter().copied());
        }
        let n = self.pending.len().min(data.len());
        for (d, s) in data.iter_mut().zip(self.pending.drain(..n)) {
            *d = s;
        }
        data[n..].fill(0.0);
        // The silence played, in 48 kHz stereo samples, keeps the played
        // ring in step with the microphone.
        let silent_frames = (data.len() - n) / self.channels;
        if silent_frames > 0 {
            let hz = u64::from(self.device_hz.max(1));
            let scaled = self.silence_left + silent_frames as u64 * u64::from(SAMPLE_RATE);
            self.silence_left = scaled % hz;
            let samples = 2 * (scaled / hz) as usize;
            if self.zeros.len() < samples {
                self.zeros.resize(samples, 0.0);
            }
            self.played.push(&self.zeros[..samples]);
        }
    }
}

fn start_input(host: &cpal::Host, wanted: Option<&str>, ring: Ring, lost: mpsc::Sender<String>) -> Result<Opened, DeviceError> {
    start_chosen("microphone", wanted, || host.input_devices(), || host.default_input_device(), DeviceError::NoInput, |d| input_on(d, ring.clone(), lost.clone()))
}

/// Fills the microphone's ring from `device`; the stream and what it is.
fn input_on(device: &cpal::Device, ring: Ring, lost: mpsc::Sender<String>) -> Result<(cpal::Stream, String), DeviceError> {
    let supported = device.default_input_config().map_err(|e| DeviceError::Stream { what: "microphone", cause: e.to_string() })?;
    let config = supported.config();
    let channels = usize::from(config.channels);
    let mut resampler = Resampler::new(config.sample_rate, SAMPLE_RATE, 1);
    let (mut mono, mut resampled) = (Vec::new(), Vec::new());
    let take = move |data: &[f32]| {
        mono.clear();
        to_mono(data, channels, &mut mono);
        resampled.clear();
        resampler.process(&mono, &mut resampled);
        ring.push(&resampled);
    };
    let error = on_stream_error("microphone", lost);
    let stream = match supported.sample_format() {
        cpal::SampleFormat::F32 => input_stream::<f32>(device, config, take, error),
        cpal::SampleFormat::I16 => input_stream::<i16>(device, config, take, error),
        other => return Err(DeviceError::Format { what: "microphone", format: format!("{other:?}") }),
    };
    Ok((playing("microphone", stream)?, format!("mic {} ({} Hz, {channels} ch)", device_name(device), config.sample_rate)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_the_oldest_and_counts_them() {
        let r = Ring::new(4);
        r.push(&[1.0, 2.0, 3.0]);
        r.push(&[4.0, 5.0, 6.0]);
        assert_eq!(r.dropped(), 2);
        let mut out = [0.0; 3];
        assert!(r.take_exact(&mut out));
        assert_eq!(out, [3.0, 4.0, 5.0]);
        assert!(!r.take_exact(&mut out), "one left, three asked");
        assert_eq!(r.pop_into(&mut out), 1);
        assert_eq!(out[0], 6.0);
        r.push(&[7.0, 8.0, 9.0]);
        assert_eq!(r.keep_newest(1), 2);
        assert!(r.take_exact(&mut out[..1]) && out[0] == 9.0);
        r.push(&[1.0, 2.0, 3.0]);
        assert_eq!(r.discard_oldest(2), 2);
        assert_eq!(r.discard_oldest(5), 1, "only what is there");
        assert!(r.is_empty());
    }

    #[test]
    fn a_full_ring_takes_device_periods_without_growing() {
        let ring = Ring::new(SPEAKER_RING);
        let room = ring.lock().capacity();
        for _ in 0..100 {
            ring.push(&[0.25; MAX_PUSH]);
        }
        assert_eq!(ring.len(), SPEAKER_RING);
        assert_eq!(ring.lock().capacity(), room, "no allocation once made");
    }

    #[test]
    fn the_speakers_take_from_the_ring_exactly_what_they_play() {
        for (device_hz, channels, period) in [(48_000, 2, 441), (44_100, 2, 512), (48_000, 1, 1024)] {
            let ring = Ring::new(1 << 20);
            // One second of a ramp, left and right.
            let stereo: Vec<f32> = (0..48_000).flat_map(|i| [i as f32, i as f32]).collect();
            ring.push(&stereo);
            let played_ring = Ring::new(1 << 20);
            let mut feed = OutputFeed::new(ring.clone(), played_ring.clone(), device_hz, channels);
            let mut played = Vec::new();
            let mut data = vec![0.0; period * channels];
            // Half a second of callbacks.
            for _ in 0..(device_hz as usize / 2 / period) {
                feed.fill(&mut data);
                played.extend(data.chunks_exact(channels).map(|f| f[0]));
            }
            let taken = 48_000 - ring.len() / 2;
            let expected = played.len() as f64 * 48_000.0 / f64::from(device_hz);
            assert!((taken as f64 - expected).abs() < 48.0 * 2.0, "{device_hz} Hz, {channels} ch, {period}: took {taken} frames for {expected:.0} played");
            // The ramp plays on without a skip: each step is one input frame's worth.
            let step = 48_000.0 / device_hz as f32;
            assert!(played.windows(2).all(|w| (w[1] - w[0] - step).abs() < 0.01), "{device_hz} Hz, {channels} ch, {period}: a skip in the ramp");
            // The played ring has what was taken, in order, for the echo canceller.
            let mut reported = vec![0.0; played_ring.len()];
            played_ring.pop_into(&mut reported);
            assert_eq!(reported.len(), 2 * taken, "{device_hz} Hz: played ring against taken");
            assert!(reported.chunks_exact(2).enumerate().all(|(i, f)| f[0] == i as f32 && f[1] == i as f32), "{device_hz} Hz: the played ring is the ramp");
        }
    }

    #[test]
    fn silence_played_when_the_ring_ran_dry_is_reported_as_played() {
        for (device_hz, channels) in [(48_000, 2), (44_100, 1)] {
            let (ring, played) = (Ring::new(1 << 20), Ring::new(1 << 20));
            let mut feed = OutputFeed::new(ring.clone(), played.clone(), device_hz, channels);
            ring.push(&vec![0.5; 2 * 480]); // 10 ms
            let mut data = vec![0.0; (device_hz as usize / 10) * channels]; // 100 ms
            feed.fill(&mut data);
            // 100 ms of device time is 100 ms in the played ring: 10 of
            // sound and 90 of silence (the resampler may keep a sample back).
            let mut reported = vec![0.0; played.len()];
            played.pop_into(&mut reported);
            assert!((reported.len() as i64 - 2 * 4800).abs() <= 4, "{device_hz} Hz: {} samples reported for 100 ms", reported.len());
            assert!(reported[..2 * 480].iter().all(|s| *s == 0.5) && reported[2 * 480 + 4..].iter().all(|s| *s == 0.0), "{device_hz} Hz: sound, then silence");
        }
        // Ten seconds of silent 512-frame periods at 44.1 kHz: ten seconds
        // reported, not a sample lost to rounding.
        let (ring, played) = (Ring::new(1 << 20), Ring::new(1 << 22));
        let mut feed = OutputFeed::new(ring, played.clone(), 44_100, 2);
        let mut data = vec![0.0; 512 * 2];
        let periods = 441_000 / 512;
        for _ in 0..periods {
            feed.fill(&mut data);
        }
        assert_eq!(played.len(), 2 * (periods * 512 * 48_000 / 44_100), "every period's silence counted");
    }

    #[test]
    fn a_device_that_went_away_is_opened_again_and_a_glitch_is_not() {
        assert!(device_lost(cpal::ErrorKind::DeviceNotAvailable), "unplugged");
        assert!(device_lost(cpal::ErrorKind::DeviceChanged), "a new default");
        assert!(device_lost(cpal::ErrorKind::StreamInvalidated), "the sound server restarted");
        assert!(!device_lost(cpal::ErrorKind::Xrun), "an xrun is a glitch");
        let (tx, rx) = mpsc::channel();
        let mut on_error = on_stream_error("audio output", tx);
        on_error(cpal::Error::from(cpal::ErrorKind::Xrun));
        assert!(rx.try_recv().is_err(), "a glitch is not reported");
        on_error(cpal::Error::from(cpal::ErrorKind::DeviceNotAvailable));
        assert!(rx.try_recv().unwrap().starts_with("audio output: "), "a lost device is");
    }

    #[test]
    fn detached_audio_has_rings_and_says_so() {
        let io = AudioIo::detached(true);
        assert!(io.mic.is_some());
        assert_eq!(io.description(), "no audio device");
        assert!(AudioIo::detached(false).mic.is_none());
    }

    /// A chosen device that is not there: the default plays, the state
    /// says why; another choice is opened in place (where there is a sound
    /// system: here, with no card, ALSA's null device as the default).
    #[test]
    fn a_missing_choice_plays_the_default_and_says_so_and_another_is_opened_in_place() {
        let devices = list();
        let missing = DeviceChoice { output: Some("No Such Headset".into()), input: None };
        let io = match AudioIo::open(false, missing) {
            Ok(io) => io,
            Err(e) => {
                assert!(devices.outputs.is_empty(), "a sound system lists devices ({devices:?}) but opens none: {e}");
                assert!(matches!(e, DeviceError::NoOutput), "{e}");
                return;
            }
        };
        let state = io.state();
        let problem = state.problem.expect("the missing device is said");
        assert_eq!(problem, "no speaker called \"No Such Headset\" is connected; using the default");
        io.speakers.push(&vec![0.0; 2 * FRAME_SAMPLES * 5]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(io.speakers.len() < 2 * FRAME_SAMPLES * 5, "the default plays: {}", state.description);
        // Another choice, by id: opened in place, the trouble gone.
        let Some(other) = devices.outputs.iter().find(|d| AudioIo::open(false, DeviceChoice { output: Some(d.id.clone()), input: None }).is_ok_and(|o| o.state().problem.is_none())) else {
            return; // nothing else here opens
        };
        io.choose(DeviceChoice { output: Some(other.id.clone()), input: None });
        let deadline = Instant::now() + Duration::from_secs(3);
        while io.state().problem.is_some() {
            assert!(Instant::now() < deadline, "the new choice was not opened within 3 s: {:?}", io.state());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(io.description().contains(&other.name), "{} plays now: {}", other.name, io.description());
    }

    /// On a machine with no sound card this is an error that says so; with
    /// one (or ALSA's null device as the default) it plays: the callbacks
    /// drain the speakers' ring and fill the microphone's. Either way it
    /// returns (no hang, no panic).
    #[test]
    fn opening_the_devices_plays_or_says_why_not() {
        match AudioIo::open(true, DeviceChoice::default()) {
            Ok(io) => {
                io.speakers.push(&vec![0.0; 2 * FRAME_SAMPLES * 5]);
                std::thread::sleep(std::time::Duration::from_millis(300));
                assert!(io.speakers.len() < 2 * FRAME_SAMPLES * 5, "the output drains the ring: {}", io.description());
                if let Some(mic) = &io.mic {
                    assert!(!mic.is_empty(), "the microphone fills its ring: {}", io.description());
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
