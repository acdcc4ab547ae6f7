"""Names, places and currencies shared by every simulated record type."""

FIRST_NAMES = [
    "Olivia", "James", "Amelia", "Mohammed", "Isla", "Noah", "Ava", "Oliver", "Mia", "Arjun",
    "Sofia", "Lucas", "Chloe", "Wei", "Fatima", "Liam", "Grace", "Mateo", "Hannah", "Kwame",
    "Emma", "Daniel", "Priya", "Jakub", "Zara", "Tom", "Aisha", "Ethan", "Lena", "Carlos",
]  # fmt: skip

LAST_NAMES = [
    "Smith", "Jones", "Patel", "Williams", "Brown", "Taylor", "Khan", "Davies", "Evans", "Wilson",
    "Nowak", "Garcia", "Murphy", "Chen", "Okafor", "Muller", "Rossi", "Kowalski", "Singh", "Walker",
    "Martin", "Dubois", "Santos", "Novak", "Ahmed", "Clarke", "Lopez", "Fischer", "Hughes", "Kim",
]  # fmt: skip

# (statement city, ISO country code, local currency). Statement descriptors print the city in
# capitals and the country code, and the currency usually follows the country.
CITIES = [
    ("LONDON", "GB", "GBP"), ("MANCHESTER", "GB", "GBP"), ("LEEDS", "GB", "GBP"),
    ("BRISTOL", "GB", "GBP"), ("EDINBURGH", "GB", "GBP"), ("GLASGOW", "GB", "GBP"),
    ("NEW YORK", "US", "USD"), ("SAN FRANCISCO", "US", "USD"), ("CHICAGO", "US", "USD"),
    ("SEATTLE", "US", "USD"), ("AUSTIN", "US", "USD"), ("BERLIN", "DE", "EUR"),
    ("MUNICH", "DE", "EUR"), ("PARIS", "FR", "EUR"), ("MADRID", "ES", "EUR"),
    ("DUBLIN", "IE", "EUR"), ("AMSTERDAM", "NL", "EUR"), ("MILAN", "IT", "EUR"),
    ("ZURICH", "CH", "CHF"), ("WARSAW", "PL", "PLN"), ("TORONTO", "CA", "CAD"),
]  # fmt: skip

CURRENCY_SYMBOLS = {"GBP": "£", "USD": "$", "EUR": "€", "JPY": "¥"}
