/* jack_notes: a JACK MIDI client that plays notes at exact transport frames.
 *
 *   jack_notes            (client "stemd-notes", MIDI output "stemd-notes:out")
 *
 * Reads lines on stdin:
 *   note ON OFF PITCH VELOCITY   a note from transport frame ON to frame OFF (channel 1), before "arm"; no
 *                                answer unless it is refused ("error ...")
 *   arm                          "ok arm N": sorts the N events and plays each when the rolling transport
 *                                reaches its frame
 *   sent                         "ok sent N LATE": events written so far, and those written later than their
 *                                frame (a locate past them); 0 late means every event left on its frame
 *   jumps                        "ok jumps N": rolling cycles, once armed, whose first frame was not where the
 *                                cycle before ended (a locate, or the dummy driver skipping frames under load)
 * Prints "ready" once active. The process callback writes each event at its frame's offset in the cycle
 * (jack_transport_query gives the cycle's first transport frame), so where a note lands on the transport
 * does not depend on the machine's load. Built by the tests: cc -O1 -o jack_notes jack_notes.c -ljack
 */
#include <jack/jack.h>
#include <jack/midiport.h>
#include <jack/transport.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EVENTS 20000

struct event {
    unsigned long frame;
    unsigned char msg[3];
};

static struct event events[MAX_EVENTS];
static int count;                 /* written by the stdin thread before arm */
static atomic_int armed;
static atomic_int next_event, late_events, jumps;
static unsigned long expected_frame;  /* where the last rolling cycle ended (process thread only) */
static int rolled;
static jack_port_t *out_port;
static jack_client_t *client;

static int by_frame(const void *a, const void *b)
{
    const struct event *x = a, *y = b;
    if (x->frame != y->frame)
        return x->frame < y->frame ? -1 : 1;
    return (x->msg[0] & 0xF0) - (y->msg[0] & 0xF0);  /* at one frame: note off (0x80) before note on */
}

static int process(jack_nframes_t nframes, void *arg)
{
    (void)arg;
    void *buffer = jack_port_get_buffer(out_port, nframes);
    jack_midi_clear_buffer(buffer);
    if (!atomic_load(&armed))
        return 0;
    jack_position_t pos;
    if (jack_transport_query(client, &pos) != JackTransportRolling)
        return 0;
    if (rolled && pos.frame != expected_frame)
        atomic_fetch_add(&jumps, 1);
    rolled = 1;
    expected_frame = (unsigned long)pos.frame + nframes;
    int i = atomic_load(&next_event);
    unsigned long end = (unsigned long)pos.frame + nframes;
    while (i < count && events[i].frame < end) {
        jack_nframes_t offset = 0;
        if (events[i].frame >= pos.frame)
            offset = (jack_nframes_t)(events[i].frame - pos.frame);
        else
            atomic_fetch_add(&late_events, 1);
        if (jack_midi_event_write(buffer, offset, events[i].msg, 3) != 0)
            break;  /* the buffer is full: the rest go next cycle (and count as late) */
        i++;
    }
    atomic_store(&next_event, i);
    return 0;
}

static void reply(const char *format, ...)  /* one line on stdout, flushed */
{
    va_list args;
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

int main(void)
{
    client = jack_client_open("stemd-notes", JackNoStartServer, NULL);
    if (!client) {
        fprintf(stderr, "jack_notes: no JACK server\n");
        return 1;
    }
    out_port = jack_port_register(client, "out", JACK_DEFAULT_MIDI_TYPE, JackPortIsOutput, 0);
    if (!out_port || jack_set_process_callback(client, process, NULL) || jack_activate(client)) {
        fprintf(stderr, "jack_notes: cannot start its JACK client\n");
        return 1;
    }
    reply("ready");
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long on, off;
        int pitch, velocity;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "note %lu %lu %d %d", &on, &off, &pitch, &velocity) == 4) {
            if (atomic_load(&armed) || count + 2 > MAX_EVENTS || pitch < 0 || pitch > 127 || velocity < 1 ||
                velocity > 127 || off <= on) {
                reply("error %s", line);
            } else {
                events[count++] = (struct event){on, {0x90, (unsigned char)pitch, (unsigned char)velocity}};
                events[count++] = (struct event){off, {0x80, (unsigned char)pitch, 0}};
            }
        } else if (!strcmp(line, "arm")) {
            qsort(events, (size_t)count, sizeof events[0], by_frame);
            atomic_store(&armed, 1);
            reply("ok arm %d", count);
        } else if (!strcmp(line, "jumps")) {
            reply("ok jumps %d", atomic_load(&jumps));
        } else if (!strcmp(line, "sent")) {
            reply("ok sent %d %d", atomic_load(&next_event), atomic_load(&late_events));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    jack_client_close(client);
    return 0;
}
