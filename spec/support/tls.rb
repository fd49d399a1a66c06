# frozen_string_literal: true

require "open3"

# Certificates made at test time with the openssl CLI: a CA, a server
# certificate for 127.0.0.1/localhost, one for another name, a client
# certificate, and a second ("rogue") CA nobody trusts.
class TestCertificates
  attr_reader :dir

  def initialize
    @dir = Dir.mktmpdir("locking-certs-")
    ca("ca")
    ca("rogue-ca")
    leaf("server", "ca", san: "IP:127.0.0.1,DNS:localhost", usage: "serverAuth")
    leaf("elsewhere", "ca", san: "DNS:elsewhere.example", usage: "serverAuth")
    leaf("client", "ca", san: "DNS:locking-client", usage: "clientAuth")
    # A cluster node's: it serves clients and dials the other nodes' bus.
    leaf("node", "ca", san: "IP:127.0.0.1,DNS:localhost", usage: "serverAuth,clientAuth")
    leaf("rogue-client", "rogue-ca", san: "DNS:locking-client", usage: "clientAuth")
  end

  def path(name) = File.join(dir, name)

  def cleanup = FileUtils.rm_rf(dir)

  private

  def openssl(*args)
    output, status = Open3.capture2e("openssl", *args, chdir: dir)
    raise "openssl #{args.join(' ')} failed: #{output}" unless status.success?
  end

  def ca(name)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "#{name}.key", "-out", "#{name}.crt", "-days", "2", "-subj", "/CN=locking test #{name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
  end

  def leaf(name, issuer, san:, usage:)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "#{name}.key", "-out", "#{name}.csr", "-subj", "/CN=#{name}")
    File.write(path("#{name}.ext"), <<~EXT)
      basicConstraints=CA:FALSE
      keyUsage=critical,digitalSignature,keyEncipherment
      extendedKeyUsage=#{usage}
      subjectAltName=#{san}
    EXT
    openssl("x509", "-req", "-in", "#{name}.csr", "-CA", "#{issuer}.crt", "-CAkey", "#{issuer}.key", "-CAcreateserial",
            "-out", "#{name}.crt", "-days", "2", "-extfile", "#{name}.ext")
  end
end

# A redis-server that speaks TLS on `tls_port`, with its plaintext port
# kept for the specs' own looking (redis-rb, bulk loads); the code under
# test only ever goes to the TLS port. `cert`: which server certificate it
# presents; `clients`: whether it requires a client certificate.
class TlsRedisServer < RedisServer
  attr_reader :tls_port

  def initialize(name, certs, cert: "server", clients: "no", settings: [])
    @certs = certs
    @cert = cert
    @clients = clients
    super(name, settings: settings)
  end

  def start
    @tls_port = free_port
    super
  end

  # The TLS URL for the code under test, trusting the test CA.
  def tls_url(db = 0, host: "127.0.0.1", **query)
    query = { ca_file: @certs.path("ca.crt") }.merge(query).compact
    "rediss://#{host}:#{tls_port}/#{db}?" + query.map { |k, v| "#{k}=#{Locking::ServerSettings.escape(v.to_s)}" }.join("&")
  end

  private

  def spawn_server
    @settings_base ||= @settings
    @settings = [*@settings_base, "--tls-port", tls_port.to_s,
                 "--tls-cert-file", @certs.path("#{@cert}.crt"), "--tls-key-file", @certs.path("#{@cert}.key"),
                 "--tls-ca-cert-file", @certs.path("ca.crt"), "--tls-auth-clients", @clients]
    super
  end
end
