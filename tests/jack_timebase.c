/* jack_timebase: a JACK timebase master at a given tempo and meter, with a reference output.
 *
 *   jack_timebase BPM BEATS_PER_BAR BEAT_TYPE [beats|quarters]
 *
 * Tempo counts quarter notes per minute (as stemd and DAWs do). JACK leaves open what its
 * beats_per_minute counts: with "beats" (the default) it is written in beats of beat_type, as JACK's own
 * example client (example-clients/transport.c) does (97 BPM 7/8 is 194); with "quarters" in quarter notes,
 * as Ardour 7's JACK timebase master writes its tempo (97). Either way the bar/beat/tick it publishes every
 * cycle are computed from the transport frame exactly (bar k starts at round(k x bar length)). Its
 * output port "frame" carries, on every sample while the transport rolls, that sample's transport
 * frame plus one, divided by 2^24 (0 while stopped). A recording of it beside a plugin's output
 * (jack_rec: all ports are read in the same cycle) says on which transport sample each recorded sample
 * was played, even if the recorder lost a cycle on a loaded machine.
 *
 * Reads "play", "stop", "locate FRAME" and "where" lines on stdin and answers each with "ok ..." ("ok where
 * rolling FRAME" for where); prints "ready" once it is the timebase master. Built by the tests: cc -O1 -o jack_timebase jack_timebase.c -ljack
 */
#include <jack/jack.h>
#include <jack/transport.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double bpm, beats_per_bar, beat_type;
static int in_quarters;  /* beats_per_minute in quarters (Ardour 7) rather than beats of beat_type */
static jack_port_t *frame_port;
static const double ticks_per_beat = 1920.0;

/* samples per bar, exact up to a double: a bar is beats_per_bar beats of 4/beat_type quarters */
static double bar_samples(double rate)
{
    return beats_per_bar * (4.0 / beat_type) * 60.0 / bpm * rate;
}

static long bar_start(long bar, double rate)  /* bar 0 = the first; round half up */
{
    return (long)floor(bar * bar_samples(rate) + 0.5);
}

static void timebase(jack_transport_state_t state, jack_nframes_t nframes, jack_position_t *pos, int new_pos,
                     void *arg)
{
    (void)state; (void)nframes; (void)new_pos; (void)arg;
    double rate = pos->frame_rate;
    double bar_len = bar_samples(rate);
    long bar = (long)floor(pos->frame / bar_len);
    while (bar_start(bar + 1, rate) <= (long)pos->frame)
        bar++;
    while (bar > 0 && bar_start(bar, rate) > (long)pos->frame)
        bar--;
    double beat_len = bar_len / beats_per_bar;
    double in_bar = (pos->frame - bar_start(bar, rate)) / beat_len;
    pos->valid = JackPositionBBT;
    pos->bar = (int32_t)bar + 1;
    pos->beat = (int32_t)floor(in_bar) + 1;
    pos->tick = (int32_t)floor((in_bar - floor(in_bar)) * ticks_per_beat);
    pos->bar_start_tick = bar * beats_per_bar * ticks_per_beat;
    pos->beats_per_bar = (float)beats_per_bar;
    pos->beat_type = (float)beat_type;
    pos->ticks_per_beat = ticks_per_beat;
    /* JACK's example counts beats of beat_type, Ardour 7 quarters; stemd's tempo counts quarters */
    pos->beats_per_minute = in_quarters ? bpm : bpm * beat_type / 4.0;
}

static jack_client_t *client;

static int process(jack_nframes_t nframes, void *arg)
{
    (void)arg;
    float *out = jack_port_get_buffer(frame_port, nframes);
    jack_position_t pos;
    int rolling = jack_transport_query(client, &pos) == JackTransportRolling;
    for (jack_nframes_t i = 0; i < nframes; i++) {
        /* (frame + 1) / 2^24: exact in a float and in a 32-bit WAV below 2^24 - 1 frames (5.8 min) */
        out[i] = rolling ? (float)((double)(pos.frame + i + 1) / 16777216.0) : 0.0f;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4 && !(argc == 5 && (!strcmp(argv[4], "beats") || !strcmp(argv[4], "quarters")))) {
        fprintf(stderr, "usage: jack_timebase BPM BEATS_PER_BAR BEAT_TYPE [beats|quarters]\n");
        return 2;
    }
    in_quarters = argc == 5 && !strcmp(argv[4], "quarters");
    bpm = atof(argv[1]);
    beats_per_bar = atof(argv[2]);
    beat_type = atof(argv[3]);
    if (!(bpm > 0 && beats_per_bar > 0 && beat_type > 0)) {
        fprintf(stderr, "jack_timebase: tempo, beats per bar and beat type must be positive\n");
        return 2;
    }
    client = jack_client_open("stemd-timebase", JackNoStartServer, NULL);
    if (!client) {
        fprintf(stderr, "jack_timebase: no JACK server\n");
        return 1;
    }
    frame_port = jack_port_register(client, "frame", JACK_DEFAULT_AUDIO_TYPE, JackPortIsOutput, 0);
    if (!frame_port || jack_set_process_callback(client, process, NULL) ||
        jack_set_timebase_callback(client, 0, timebase, NULL) || jack_activate(client)) {
        fprintf(stderr, "jack_timebase: cannot become the JACK timebase master\n");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long frame;
        if (!strncmp(line, "play", 4))
            jack_transport_start(client);
        else if (!strncmp(line, "stop", 4))
            jack_transport_stop(client);
        else if (sscanf(line, "locate %lu", &frame) == 1)
            jack_transport_locate(client, (jack_nframes_t)frame);
        line[strcspn(line, "\n")] = 0;
        if (!strcmp(line, "where")) {  /* "ok where rolling|stopped|starting FRAME" */
            jack_position_t pos;
            jack_transport_state_t state = jack_transport_query(client, &pos);
            printf("ok where %s %lu\n", state == JackTransportRolling ? "rolling" :
                   state == JackTransportStopped ? "stopped" : "starting", (unsigned long)pos.frame);
            fflush(stdout);
            continue;
        }
        printf("ok %s\n", line);
        fflush(stdout);
    }
    jack_client_close(client);
    return 0;
}
