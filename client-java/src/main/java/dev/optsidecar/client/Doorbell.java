package dev.optsidecar.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import dev.optsidecar.proto.v1.DoorbellError;
import dev.optsidecar.proto.v1.DoorbellFrame;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepResult;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;

import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.function.BooleanSupplier;

/**
 * A shared-memory Step stream's commits and results over the server's doorbell socket (protocol:
 * DoorbellFrame) instead of gRPC: a write and a read per step. The stream stays open beside it;
 * its StepOpen carried the secret this connection presents.
 */
final class Doorbell implements AutoCloseable {
    private static final int MAX_FRAME_BYTES = 1 << 20;
    /** How long the server may take to see the stream's StepOpen and attach the socket to it. */
    private static final long ATTACH_WAIT_NANOS = 10_000_000_000L;
    private static final long WRITE_WAIT_MILLIS = 5_000;

    private final SocketChannel channel;
    private final Selector readable;
    private ByteBuffer in = ByteBuffer.allocate(4096).order(ByteOrder.LITTLE_ENDIAN);

    private Doorbell(SocketChannel channel) throws IOException {
        this.channel = channel;
        channel.configureBlocking(false);
        this.readable = Selector.open();
        channel.register(readable, SelectionKey.OP_READ);
    }

    /**
     * Connects to {@code socket} and presents {@code secret}; null when the server does not attach
     * it (no such socket, a refusal, or the stream failed first, as {@code streamFailed} tells:
     * then the stream's own error shows in the step).
     */
    static Doorbell attach(Path socket, ByteString secret, BooleanSupplier streamFailed) {
        Doorbell bell = null;
        try {
            bell = new Doorbell(SocketChannel.open(UnixDomainSocketAddress.of(socket)));
            bell.send(DoorbellFrame.newBuilder().setSecret(secret).build());
            long deadline = System.nanoTime() + ATTACH_WAIT_NANOS;
            DoorbellFrame answer = null;
            while (answer == null && !streamFailed.getAsBoolean() && System.nanoTime() < deadline) {
                answer = bell.read(50);
            }
            if (answer != null && answer.getAttached()) {
                return bell;
            }
        } catch (IOException | RuntimeException e) {
            // commits go on the stream
        }
        if (bell != null) {
            bell.close();
        }
        return null;
    }

    /** Sends a commit and returns its result; the error that ended the stream is thrown as the stream would. */
    StepResult commit(StepCommit commit) {
        DoorbellFrame answer;
        try {
            send(DoorbellFrame.newBuilder().setCommit(commit).build());
            answer = read(0);
        } catch (IOException e) {
            throw Status.UNAVAILABLE.withDescription("the doorbell socket closed: " + e.getMessage()).asRuntimeException();
        }
        if (answer == null) {
            throw Status.UNAVAILABLE.withDescription("the doorbell socket closed").asRuntimeException();
        }
        return switch (answer.getKindCase()) {
            case RESULT -> answer.getResult();
            case ERROR -> throw statusOf(answer.getError());
            default -> throw new IllegalStateException("the doorbell answered a commit with " + answer.getKindCase());
        };
    }

    /** The error as gRPC would have ended the stream with it, details included. */
    private static StatusRuntimeException statusOf(DoorbellError error) {
        if (!error.getStatusDetails().isEmpty()) {
            try {
                return StatusProto.toStatusRuntimeException(com.google.rpc.Status.parseFrom(error.getStatusDetails()));
            } catch (InvalidProtocolBufferException e) {
                // the code and message still stand
            }
        }
        return Status.fromCodeValue(error.getCode()).withDescription(error.getMessage()).asRuntimeException();
    }

    private void send(DoorbellFrame frame) throws IOException {
        byte[] body = frame.toByteArray();
        ByteBuffer out = ByteBuffer.allocate(4 + body.length).order(ByteOrder.LITTLE_ENDIAN);
        out.putInt(body.length).put(body).flip();
        while (out.hasRemaining()) {
            if (channel.write(out) == 0) {
                awaitWritable(); // a commit is small: the socket takes it at once unless the server stopped reading
            }
        }
    }

    private void awaitWritable() throws IOException {
        try (Selector writable = Selector.open()) {
            channel.register(writable, SelectionKey.OP_WRITE);
            if (writable.select(WRITE_WAIT_MILLIS) == 0) {
                throw new IOException("the server took no commit for " + WRITE_WAIT_MILLIS + " ms");
            }
        }
    }

    /** The next frame; null at end of stream, or after {@code timeoutMillis} (0: no limit) without one. */
    private DoorbellFrame read(long timeoutMillis) throws IOException {
        long deadline = System.nanoTime() + timeoutMillis * 1_000_000;
        while (true) {
            if (in.position() >= 4) {
                long length = Integer.toUnsignedLong(in.getInt(0));
                if (length > MAX_FRAME_BYTES) {
                    throw new IOException("the doorbell sent a frame of " + length + " bytes");
                }
                int whole = 4 + (int) length;
                if (in.position() >= whole) {
                    DoorbellFrame frame = DoorbellFrame.parseFrom(ByteBuffer.wrap(in.array(), 4, (int) length));
                    in.flip().position(whole);
                    in.compact();
                    return frame;
                }
                if (in.capacity() < whole) {
                    ByteBuffer larger = ByteBuffer.allocate(whole).order(ByteOrder.LITTLE_ENDIAN);
                    in.flip();
                    larger.put(in);
                    in = larger;
                }
            }
            int n = channel.read(in);
            if (n < 0) {
                return null;
            }
            if (n == 0) {
                long left = timeoutMillis == 0 ? 0 : (deadline - System.nanoTime()) / 1_000_000;
                if (timeoutMillis != 0 && left <= 0) {
                    return null;
                }
                readable.select(left);
                readable.selectedKeys().clear();
            }
        }
    }

    @Override
    public void close() {
        try {
            readable.close();
        } catch (IOException e) {
            // closing anyway
        }
        try {
            channel.close();
        } catch (IOException e) {
            // closing anyway
        }
    }
}
