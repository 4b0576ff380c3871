package dev.optsidecar.server.shm;

import com.google.protobuf.InvalidProtocolBufferException;
import dev.optsidecar.proto.v1.DoorbellError;
import dev.optsidecar.proto.v1.DoorbellFrame;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.OptError;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Logger;

/**
 * One connection to the doorbell: a thread reads its frames (first the secret, then commits) and
 * hands commits to the stream it attached to; results and the final error are written from
 * whichever thread has them. Writes wait little: the client reads each result before it sends
 * its next commit, so the socket's buffer has room for a result unless the client stopped reading;
 * a result larger than that buffer (a model of billions of parameters lists a CRC per MiB) may
 * wait up to {@link #WRITE_WAIT_MILLIS} for the client to take it, and a line whose client
 * takes nothing for that long is cut off.
 */
public final class DoorbellLine {
    private static final Logger LOG = Logger.getLogger(DoorbellLine.class.getName());
    private static final AtomicInteger NEXT_ID = new AtomicInteger();
    private static final int LENGTH_BYTES = Integer.BYTES;
    static final long WRITE_WAIT_MILLIS = 5_000;
    /** A line's reader holds little: a frame buffer and a selector. */
    private static final long READER_STACK_BYTES = 256 * 1024;

    private final Doorbell doorbell;
    private final SocketChannel channel;
    private final Selector selector;
    private final Thread reader;
    /** Received bytes not yet taken as frames; in write mode between reads. */
    private ByteBuffer in = ByteBuffer.allocate(4096).order(ByteOrder.LITTLE_ENDIAN);
    private volatile boolean closed;

    DoorbellLine(Doorbell doorbell, SocketChannel channel) throws IOException {
        this.doorbell = doorbell;
        this.channel = channel;
        channel.configureBlocking(false);
        this.selector = Selector.open();
        try {
            channel.register(selector, SelectionKey.OP_READ);
        } catch (IOException | RuntimeException e) {
            selector.close();
            throw e;
        }
        this.reader = new Thread(null, this::serve, "optsidecar-doorbell-" + NEXT_ID.incrementAndGet(),
                READER_STACK_BYTES);
        reader.setDaemon(true);
    }

    void start() {
        reader.start();
    }

    private void serve() {
        Doorbell.Stream stream = null;
        boolean attached = false;
        try {
            try {
                stream = handshake();
                attached = stream != null && stream.attach(this);
                if (stream != null && !attached) {
                    fail(OptError.precondition("doorbell: the Step stream with this secret has ended or has a doorbell"
                            + " already").withField("secret"));
                }
            } finally {
                doorbell.handshakeDone();
            }
            if (!attached) {
                return;
            }
            write(DoorbellFrame.newBuilder().setAttached(true).build());
            for (DoorbellFrame frame; (frame = readFrame(Long.MAX_VALUE)) != null; ) {
                if (frame.getKindCase() == DoorbellFrame.KindCase.COMMIT) {
                    stream.doorbellCommit(frame.getCommit());
                } else {
                    stream.doorbellRejected(OptError.invalid("doorbell: after the secret only commits may be sent,"
                            + " not %s", frame.getKindCase()).withField("commit"));
                }
            }
        } catch (OptError e) {
            if (attached) {
                stream.doorbellRejected(e);
            } else {
                fail(e);
            }
        } catch (IOException e) {
            LOG.fine(() -> "doorbell line ended: " + e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            close();
            try {
                selector.close();
            } catch (IOException e) {
                // closed anyway
            }
            if (attached) {
                stream.doorbellClosed(this);
            }
        }
    }

    /** Reads the secret and finds its stream; null (after an error frame) if there is none. */
    private Doorbell.Stream handshake() throws IOException, InterruptedException {
        long deadline = System.nanoTime() + Doorbell.HELLO_WAIT_NANOS;
        DoorbellFrame hello = readFrame(deadline);
        if (hello == null) {
            return null; // closed, or silent past the wait
        }
        if (hello.getKindCase() != DoorbellFrame.KindCase.SECRET) {
            fail(OptError.invalid("doorbell: the first frame must be the stream's secret, not %s", hello.getKindCase())
                    .withField("secret"));
            return null;
        }
        try {
            Doorbell.checkSecret(hello.getSecret(), "secret");
        } catch (OptError e) {
            fail(e);
            return null;
        }
        Doorbell.Stream stream = doorbell.await(hello.getSecret(), deadline);
        if (stream == null && !closed) {
            fail(OptError.precondition("doorbell: no open Step stream has this secret (its StepOpen failed, or"
                    + " did not come within %d s)", Doorbell.HELLO_WAIT_NANOS / 1_000_000_000L).withField("secret"));
        }
        return stream;
    }

    /** Sends a step's result. */
    public void result(StepResult result) {
        write(DoorbellFrame.newBuilder().setResult(result).build());
    }

    /** Sends the error that ends the line, and closes it. */
    public void fail(DoorbellError error) {
        write(DoorbellFrame.newBuilder().setError(error).build());
        close();
    }

    private void fail(OptError error) {
        fail(doorbell.errorFrame(error));
    }

    private synchronized void write(DoorbellFrame frame) {
        if (closed) {
            return;
        }
        byte[] bytes = frame.toByteArray();
        ByteBuffer out = ByteBuffer.allocate(LENGTH_BYTES + bytes.length).order(ByteOrder.LITTLE_ENDIAN);
        out.putInt(bytes.length).put(bytes).flip();
        try {
            long deadline = System.nanoTime() + WRITE_WAIT_MILLIS * 1_000_000;
            while (out.hasRemaining()) {
                if (channel.write(out) == 0 && !awaitWritable(deadline)) {
                    LOG.warning("doorbell line cut off: its client does not read its results");
                    close();
                    return;
                }
            }
        } catch (IOException e) {
            close();
        }
    }

    /** Waits until the socket takes more bytes; false if it did not before {@code deadline}. */
    private boolean awaitWritable(long deadline) throws IOException {
        try (Selector writable = Selector.open()) {
            channel.register(writable, SelectionKey.OP_WRITE);
            while (!closed) {
                long left = (deadline - System.nanoTime()) / 1_000_000;
                if (left <= 0) {
                    return false;
                }
                if (writable.select(left) > 0) {
                    return true;
                }
            }
            return false;
        }
    }

    /**
     * The next frame, or null at end of stream, on close, or when {@code deadlineNanos} (a
     * {@link System#nanoTime} value; {@link Long#MAX_VALUE}: none) passes first.
     */
    private DoorbellFrame readFrame(long deadlineNanos) throws IOException {
        while (!closed) {
            DoorbellFrame frame = takeFrame();
            if (frame != null) {
                return frame;
            }
            int n = channel.read(in);
            if (n < 0) {
                return null;
            }
            if (n > 0) {
                continue;
            }
            long waitMillis = 0;
            if (deadlineNanos != Long.MAX_VALUE) {
                long left = deadlineNanos - System.nanoTime();
                if (left <= 0) {
                    return null;
                }
                waitMillis = Math.max(1, left / 1_000_000);
            }
            selector.select(waitMillis);
            selector.selectedKeys().clear();
        }
        return null;
    }

    /** A whole frame from the bytes received, if there is one; grows the buffer for a longer one. */
    private DoorbellFrame takeFrame() throws IOException {
        if (in.position() < LENGTH_BYTES) {
            return null;
        }
        long length = Integer.toUnsignedLong(in.getInt(0));
        if (length > Doorbell.MAX_FRAME_BYTES) {
            throw OptError.invalid("doorbell: a frame of %d bytes; at most %d", length, Doorbell.MAX_FRAME_BYTES)
                    .withField("frame");
        }
        int whole = LENGTH_BYTES + (int) length;
        if (in.position() < whole) {
            if (in.capacity() < whole) {
                ByteBuffer larger = ByteBuffer.allocate(whole).order(ByteOrder.LITTLE_ENDIAN);
                in.flip();
                larger.put(in);
                in = larger;
            }
            return null;
        }
        DoorbellFrame frame;
        try {
            frame = DoorbellFrame.parseFrom(ByteBuffer.wrap(in.array(), LENGTH_BYTES, (int) length));
        } catch (InvalidProtocolBufferException e) {
            throw OptError.invalid("doorbell: a frame that is not a DoorbellFrame: %s", e.getMessage()).withField("frame");
        }
        in.flip().position(whole);
        in.compact();
        return frame;
    }

    /** Ends the line; its reader stops. Idempotent, from any thread. */
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        selector.wakeup();
        Doorbell.closeQuietly(channel);
        doorbell.ended(this);
    }
}
